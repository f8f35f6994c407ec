import { createHash } from 'node:crypto'
import { mkdirSync } from 'node:fs'
import { setTimeout as delay } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import Fastify from 'fastify'
import type { Browser, Page } from 'playwright-core'
import t from 'tap'
import { statusPageCsp, statusPageHtml, type GatewayStatus, type KeyStatus } from '../gateway/status-page.js'
import { chromiumSkip, launchChromium } from './helpers/chromium.js'

// The gateway's operator page in a real browser (headless Chromium), served as the gateway serves
// it: the HTML under its Content-Security-Policy and a scripted status.json. The page must render
// every section from the document, run under the CSP without a single violation, follow a key
// rotation without a reload, keep the last data behind an error banner when a fetch fails, and
// show markup in the data as text.

const skip = chromiumSkip()

// The screenshot is this test's output, kept on purpose for a person to look at (.tap/ is git-ignored).
const SCREENSHOTS = fileURLToPath(new URL('../.tap/screenshots/', import.meta.url))

const XSS_KID = '<img src=x onerror="window.__xss=1">'
const MIN = 60_000
const iso = (ms: number): string => new Date(ms).toISOString()

function key (kid: string, state: KeyStatus['state'], times: Partial<Record<'createdAt' | 'activatesAt' | 'activatedAt' | 'retiredAt' | 'revokedAt', number>>, published: boolean): KeyStatus {
  const at = (k: keyof typeof times): string | null => times[k] === undefined ? null : iso(times[k]!)
  return { kid, state, createdAt: at('createdAt'), activatesAt: at('activatesAt'), activatedAt: at('activatedAt'), retiredAt: at('retiredAt'), revokedAt: at('revokedAt'), published }
}

/** The status document before (rotated = false) and after a rotation. */
function fixture (now: number, rotated: boolean): GatewayStatus {
  const keys: KeyStatus[] = [
    key('kid-revoked', 'revoked', { createdAt: now - 300 * MIN, activatedAt: now - 300 * MIN, revokedAt: now - 240 * MIN }, false),
    key('kid-retired', 'retired', { createdAt: now - 240 * MIN, activatedAt: now - 240 * MIN, retiredAt: now - 60 * MIN }, true),
    rotated
      ? key('kid-active', 'retired', { createdAt: now - 90 * MIN, activatedAt: now - 60 * MIN, retiredAt: now - 1000 }, true)
      : key('kid-active', 'active', { createdAt: now - 90 * MIN, activatedAt: now - 60 * MIN }, true),
    rotated
      ? key('kid-pending', 'active', { createdAt: now - 10 * MIN, activatesAt: now - 1000, activatedAt: now - 1000 }, true)
      : key('kid-pending', 'pending', { createdAt: now - 10 * MIN, activatesAt: now + 50 * MIN }, true),
    key(XSS_KID, 'published', {}, true)
  ]
  if (rotated) keys.push(key('kid-new', 'pending', { createdAt: now - 500, activatesAt: now + 60 * MIN }, true))
  return {
    generatedAt: iso(now),
    gateway: { version: rotated ? 'b7c1d2e3f4a5' : '3f9a0c1d2e4b', loadedAt: iso(now - 30 * MIN), startedAt: iso(now - 120 * MIN), pid: 4242 },
    keys: { source: 'http://127.0.0.1:8091/keys', error: null, items: keys },
    issuers: [
      { issuer: 'https://auth.example.test', jwksUri: 'https://auth.example.test/.well-known/jwks.json', loaded: true, lastFetchAt: iso(now - 12_000), ageSeconds: 12, stale: false, lastError: null, kids: ['kid-retired', 'kid-active', 'kid-pending'] },
      { issuer: 'https://partner.example.test', jwksUri: 'https://keys.partner.example.test/jwks', loaded: true, lastFetchAt: iso(now - 900_000), ageSeconds: 900, stale: true, lastError: 'HTTP 503 from the JWKS URI <b>', kids: [XSS_KID] }
    ],
    upstreams: [
      { origin: 'http://127.0.0.1:3001', breaker: 'closed', routes: ['users'], errors: 0 },
      { origin: 'http://127.0.0.1:3002', breaker: 'open', routes: ['orders'], errors: 17 }
    ],
    routes: [
      { name: 'users', prefix: '/api/users', upstream: 'http://127.0.0.1:3001', methods: ['GET'], auth: true, rateLimit: { max: 100, timeWindowSeconds: 60, scope: 'route' } },
      { name: 'orders', prefix: '/api/orders', upstream: 'http://127.0.0.1:3002', methods: null, auth: true, rateLimit: { max: 600, timeWindowSeconds: 60, scope: 'global' } },
      { name: 'health', prefix: '/health', upstream: 'http://127.0.0.1:3001', methods: ['GET'], auth: false, rateLimit: null }
    ],
    counters: { requests: rotated ? 1300 : 1234, byClass: { '2xx': 1100, '3xx': 4, '4xx': 110, '5xx': 20 }, authFailures: 37, rateLimited: 9, upstreamErrors: 17, configReloads: 2 }
  }
}

/** Polls until `check` is true; false when `ms` pass first. */
async function eventually (check: () => Promise<boolean>, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms
  for (;;) {
    if (await check()) return true
    if (Date.now() > deadline) return false
    await delay(100)
  }
}

/** [kid, state] of every key row, in page order. */
async function keyRows (page: Page): Promise<Array<[string, string]>> {
  const rows = page.locator('#keys [data-kid]')
  const out: Array<[string, string]> = []
  for (let i = 0; i < await rows.count(); i++) {
    out.push([(await rows.nth(i).getAttribute('data-kid'))!, (await rows.nth(i).getAttribute('data-state'))!])
  }
  return out
}

// Recorded in the page from before its first script runs: every CSP violation event.
const RECORD_VIOLATIONS = `window.__violations = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.__violations.push({ directive: e.violatedDirective, blocked: e.blockedURI, sample: e.sample })
})`

interface Watched { page: Page, violations: () => Promise<unknown[]>, consoleCsp: string[], pageErrors: string[] }

async function openPage (browser: Browser, url: string): Promise<Watched> {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } })
  const consoleCsp: string[] = []
  const pageErrors: string[] = []
  page.on('console', (m) => { if (/Content[ -]Security[ -]Policy/i.test(m.text())) consoleCsp.push(m.text()) })
  page.on('pageerror', (e) => pageErrors.push(e.message))
  await page.addInitScript({ content: RECORD_VIOLATIONS })
  await page.goto(url)
  return { page, violations: async () => (await page.evaluate('window.__violations')) as unknown[], consoleCsp, pageErrors }
}

t.test('the operator page in headless Chromium', { skip }, async (t) => {
  let doc = fixture(Date.now(), false)
  let failing = false
  let jsonRequests = 0
  const server = Fastify({ logger: false })
  server.get('/status', async (_req, reply) => reply
    .header('content-security-policy', statusPageCsp()).type('text/html; charset=utf-8').send(statusPageHtml()))
  // the same page under a policy whose script hash is wrong: the control for the violation check
  server.get('/status-wrong-hash', async (_req, reply) => reply
    .header('content-security-policy', statusPageCsp().replace(/script-src 'sha256-[^']+'/, `script-src 'sha256-${createHash('sha256').update('other').digest('base64')}'`))
    .type('text/html; charset=utf-8').send(statusPageHtml()))
  server.get('/status.json', async (_req, reply) => {
    jsonRequests++
    if (failing) return reply.code(500).send({ statusCode: 500, code: 'X', error: 'Internal Server Error', message: 'scripted failure' })
    return reply.header('cache-control', 'no-store').send(doc)
  })
  await server.listen({ port: 0, host: '127.0.0.1' })
  const base = `http://127.0.0.1:${(server.server.address() as { port: number }).port}`
  t.teardown(() => server.close())
  const browser = await launchChromium()
  t.teardown(() => browser.close())

  await t.test('the policy check fails when the script hash is wrong (control)', async (t) => {
    const w = await openPage(browser, `${base}/status-wrong-hash`)
    t.teardown(() => w.page.close())
    t.ok(await eventually(async () => (await w.violations()).length > 0, 5000), 'a securitypolicyviolation event')
    const directives = ((await w.violations()) as Array<{ directive: string }>).map((v) => v.directive)
    t.ok(directives.some((d) => d.startsWith('script-src')), `on script-src (${directives.join(', ')})`)
    t.ok(w.consoleCsp.length > 0, 'and a console message')
    t.equal(await w.page.locator('#updated').textContent(), 'never', 'the blocked script rendered nothing')
    t.equal(await w.page.locator('[data-kid]').count(), 0)
  })

  const w = await openPage(browser, `${base}/status`)
  const { page } = w
  t.teardown(() => page.close())

  await t.test('renders every section from status.json under the CSP, without a violation', async (t) => {
    t.ok(await eventually(async () => await page.locator('#keys [data-kid]').count() === 5, 10_000), 'five key rows')
    const headers = await page.request.get(`${base}/status`)
    t.match(headers.headers()['content-security-policy'], /^default-src 'none'; script-src 'sha256-[A-Za-z0-9+/]+=*'; style-src 'sha256-[A-Za-z0-9+/]+=*'; connect-src 'self'; img-src data:$/)
    t.same(await keyRows(page), [['kid-revoked', 'revoked'], ['kid-retired', 'retired'], ['kid-active', 'active'], ['kid-pending', 'pending'], [XSS_KID, 'published']])
    t.equal(await page.locator('#updated').textContent(), doc.generatedAt, 'the header shows the generatedAt rendered')
    t.equal(await page.locator('#version').textContent(), '3f9a0c1d2e4b')
    t.equal(await page.locator('#pid').textContent(), '4242')
    t.ok(await page.locator('#error').isHidden(), 'no error banner')

    // the bars: the phases each key went through, on one shared axis
    const phases = async (kid: string): Promise<string[]> => await page.locator(`#keys [data-kid="${kid}"] rect`).evaluateAll((els) => els.map((e) => e.getAttribute('data-phase') ?? ''))
    t.same(await phases('kid-revoked'), ['pending', 'active', 'revoked'])
    t.same(await phases('kid-retired'), ['pending', 'active', 'retired'])
    t.same(await phases('kid-active'), ['pending', 'active'])
    t.same(await phases('kid-pending'), ['pending', 'planned'])
    const x = async (kid: string, phase: string): Promise<number> => Number(await page.locator(`#keys [data-kid="${kid}"] rect[data-phase="${phase}"]`).getAttribute('x'))
    t.equal(await x('kid-retired', 'retired'), await x('kid-active', 'active'), 'one axis: kid-retired retires where kid-active activates')
    t.ok(await x('kid-revoked', 'pending') < await x('kid-pending', 'pending'), 'older keys start further left')
    const tip = await page.locator('#keys [data-kid="kid-retired"] rect[data-phase="retired"] title').textContent()
    t.match(tip, `retired: ${doc.keys.items[1]!.retiredAt!.replace('T', ' ').replace(/\.\d+Z$/, 'Z')}`, 'the transition time in the tooltip')
    t.ok(await page.locator('#keys .axis text').count() >= 2, 'an axis with time labels')
    t.ok(await page.locator('.legend .sw.revoked').count() === 1, 'a legend')

    const auth = page.locator('[data-issuer="https://auth.example.test"]')
    t.equal(await auth.getAttribute('data-stale'), 'false')
    t.match(await auth.textContent(), /kid-retired kid-active kid-pending/)
    const partner = page.locator('[data-issuer="https://partner.example.test"]')
    t.equal(await partner.getAttribute('data-stale'), 'true')
    t.match(await partner.textContent(), /HTTP 503 from the JWKS URI <b>/)
    t.match(await partner.textContent(), /15 min ago/)

    t.equal(await page.locator('[data-origin="http://127.0.0.1:3001"]').getAttribute('data-breaker'), 'closed')
    t.equal(await page.locator('[data-origin="http://127.0.0.1:3002"]').getAttribute('data-breaker'), 'open')
    t.match(await page.locator('[data-route="users"]').textContent(), /100 \/ 60 s \(route\)/)
    t.match(await page.locator('[data-route="orders"]').textContent(), /600 \/ 60 s \(global\)/)
    t.match(await page.locator('[data-route="health"]').textContent(), /none$/)

    const counter = async (name: string): Promise<string | null> => await page.locator(`[data-counter="${name}"] .v`).textContent()
    t.equal(await counter('requests'), '1234')
    t.equal(await counter('5xx'), '20')
    t.equal(await counter('authFailures'), '37')
    t.equal(await counter('rateLimited'), '9')
    t.equal(await counter('configReloads'), '2')

    t.same(await w.violations(), [], 'no securitypolicyviolation event')
    t.same(w.consoleCsp, [], 'no CSP message on the console')
    t.same(w.pageErrors, [], 'no script error')

    mkdirSync(SCREENSHOTS, { recursive: true })
    await page.screenshot({ path: `${SCREENSHOTS}status-page.png`, fullPage: true })
  })

  await t.test('markup in the data is shown as text', async (t) => {
    t.equal(await page.locator('#keys .kid').nth(4).textContent(), XSS_KID, 'the kid, as text')
    t.equal(await page.locator('img').count(), 0, 'no img element anywhere')
    t.equal(await page.locator('b', { hasText: 'HTTP 503' }).count(), 0, 'the issuer error is not markup')
    t.equal(await page.evaluate('typeof window.__xss'), 'undefined', 'no handler ran')
  })

  await t.test('a rotation shows within a few seconds, without a reload', async (t) => {
    let navigations = 0
    page.on('framenavigated', () => { navigations++ })
    await page.evaluate('window.__sameDocument = true')
    const before = jsonRequests
    doc = fixture(Date.now(), true)
    const want: Array<[string, string]> = [['kid-revoked', 'revoked'], ['kid-retired', 'retired'], ['kid-active', 'retired'], ['kid-pending', 'active'], [XSS_KID, 'published'], ['kid-new', 'pending']]
    t.ok(await eventually(async () => JSON.stringify(await keyRows(page)) === JSON.stringify(want), 6000), 'the new states within 6 s')
    t.same(await keyRows(page), want)
    t.ok(jsonRequests > before, 'status.json fetched again')
    t.equal(await page.evaluate('window.__sameDocument'), true, 'the same document: no reload')
    t.equal(navigations, 0)
    t.equal(await page.locator('#updated').textContent(), doc.generatedAt)
    t.equal(await page.locator('#version').textContent(), 'b7c1d2e3f4a5')
    t.equal(await page.locator('[data-counter="requests"] .v').textContent(), '1300')
    t.same(await page.locator('#keys [data-kid="kid-pending"] rect').evaluateAll((els) => els.map((e) => e.getAttribute('data-phase'))), ['pending', 'active'])
  })

  await t.test('a failed fetch shows the error banner and keeps the last data', async (t) => {
    const shown = doc.generatedAt
    failing = true
    t.ok(await eventually(async () => await page.locator('#error').isVisible(), 6000), 'the banner within 6 s')
    t.match(await page.locator('#error').textContent(), /HTTP 500/)
    t.match(await page.locator('#error').textContent(), shown, 'it says which data is shown')
    t.equal(await page.locator('#keys [data-kid]').count(), 6, 'the last key rows stay')
    t.equal(await page.locator('#updated').textContent(), shown)
    t.equal(await page.locator('[data-origin="http://127.0.0.1:3002"]').getAttribute('data-breaker'), 'open')
    failing = false
    doc = fixture(Date.now(), true)
    t.ok(await eventually(async () => await page.locator('#error').isHidden(), 6000), 'the banner goes once a fetch succeeds')
    t.equal(await page.locator('#updated').textContent(), doc.generatedAt)
    t.same(await w.violations(), [], 'still no CSP violation')
    t.same(w.pageErrors, [], 'no script error')
  })
})
