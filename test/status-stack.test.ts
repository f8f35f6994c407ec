import { mkdirSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { chromiumSkip, launchChromium } from './helpers/chromium.js'
import { runningStack, SHORT_KEY_TIMINGS } from './helpers/stack.js'
import type { GatewayStatus } from '../gateway/status-page.js'

// The gateway's operator page on a running stack, in headless Chromium: the key timeline comes from
// auth's admin /keys (the stack sets GATEWAY_STATUS_KEYS_URL), the issuers' JWKS, breakers, routes
// and counters from the gateway itself; after the rotation worker rotates, the page shows it.
t.setTimeout(180_000)

// The screenshot is this test's output, kept on purpose for a person to look at (.tap/ is git-ignored).
const SCREENSHOTS = fileURLToPath(new URL('../.tap/screenshots/', import.meta.url))

const skip = chromiumSkip()

t.test('the /status page of a running stack shows its keys and follows a rotation', { skip }, async (t) => {
  const { stack } = await runningStack(t, { ...SHORT_KEY_TIMINGS })
  const u = stack.urls

  // some traffic for the counters: an anonymous request (401) and a login + one order
  const anon = await fetch(`${u.gateway}/api/orders`)
  t.equal(anon.status, 401)
  const login = await (await fetch(`${u.auth}/auth/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ username: 'alice', password: 'alice-demo-pass' }) })).json() as { access_token: string }
  const order = await fetch(`${u.gateway}/api/orders`, { method: 'POST', headers: { authorization: `Bearer ${login.access_token}`, 'content-type': 'application/json' }, body: JSON.stringify({ items: [{ productId: 'p-1', quantity: 1 }] }) })
  t.equal(order.status, 201)

  // the JSON document, as a script reads it
  const res = await fetch(`${u.gatewayAdmin}/status.json`)
  t.equal(res.status, 200)
  t.equal(res.headers.get('cache-control'), 'no-store')
  const doc = await res.json() as GatewayStatus
  t.equal(doc.keys.source, `${u.authAdmin}/keys`, 'the key timeline is read from auth\'s admin listener')
  t.equal(doc.keys.error, null)
  const active = doc.keys.items.filter((k) => k.state === 'active')
  t.equal(active.length, 1, 'one active key')
  t.ok(active[0]!.published, 'the active key is in the JWKS the gateway holds')
  t.ok(active[0]!.activatedAt !== null, 'with its activation time')
  t.equal(doc.issuers.length, 1)
  t.ok(doc.issuers[0]!.loaded && !doc.issuers[0]!.stale, 'the issuer\'s JWKS is loaded and fresh')
  t.ok(doc.issuers[0]!.kids.includes(active[0]!.kid), 'its kids include the active key')
  t.same(doc.routes.map((r) => r.name).sort(), ['orders', 'products', 'users'], 'the stack\'s three routes')
  t.ok(doc.upstreams.length === 3 && doc.upstreams.every((x) => x.breaker === 'closed'), 'three upstreams, breakers closed')
  t.ok(doc.counters.requests >= 2 && doc.counters.byClass['4xx'] >= 1 && doc.counters.byClass['2xx'] >= 1, `counters: ${JSON.stringify(doc.counters)}`)
  t.ok(doc.counters.authFailures >= 1, 'the anonymous request counted as an auth failure')
  t.equal(doc.gateway.pid, stack.pids.get('gateway'), 'the gateway\'s own pid')

  // the page
  const browser = await launchChromium()
  t.teardown(() => browser.close())
  const page = await browser.newPage()
  const violations: string[] = []
  page.on('console', (m) => { if (/Content Security Policy|Refused to/i.test(m.text())) violations.push(m.text()) })
  const html = await page.goto(`${u.gatewayAdmin}/status`)
  t.equal(html?.status(), 200)
  t.match(html?.headers()['content-security-policy'], /default-src 'none'/, 'served with a strict CSP')
  const first = active[0]!.kid
  // a key lives 9 s here: by the time Chromium has started and loaded the page the worker may
  // already have retired it, so the page shows it active or, already, retired
  const shown = await page.waitForSelector(`[data-kid="${first}"][data-state="active"], [data-kid="${first}"][data-state="retired"]`, { timeout: 10_000 })
  t.pass(`the page shows the key that was active, ${first}, as ${await shown.getAttribute('data-state')}`)
  t.ok(await page.locator('[data-issuer]').count() >= 1, 'the issuer is shown')
  t.equal(await page.locator('[data-origin][data-breaker="closed"]').count(), 3, 'three upstreams, breakers closed')
  t.equal(await page.locator('[data-route]').count(), 3, 'three routes')

  // the rotation worker makes a new key active: the page shows the old one retired without a reload
  await page.waitForSelector(`[data-kid="${first}"][data-state="retired"]`, { timeout: 60_000 })
  t.pass(`after the rotation the page shows ${first} retired`)
  const after = await (await fetch(`${u.gatewayAdmin}/status.json`)).json() as GatewayStatus
  const next = after.keys.items.find((k) => k.state === 'active')
  t.ok(next !== undefined && next.kid !== first, 'another key is active')
  await page.waitForSelector(`[data-kid="${next!.kid}"][data-state="active"]`, { timeout: 10_000 })
  t.pass(`and ${next!.kid} active`)
  mkdirSync(SCREENSHOTS, { recursive: true })
  await page.screenshot({ path: `${SCREENSHOTS}status-stack.png`, fullPage: true })
  t.comment(`screenshot: ${SCREENSHOTS}status-stack.png`)
  t.same(violations, [], 'no CSP violation')
})
