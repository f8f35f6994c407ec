import { spawnSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { DEFAULT_URLS, walkthrough } from '../cli/stack/walkthrough.js'
import { claimsOf, gone, headerOf, REPO_ROOT, stackPorts, startStack, tempDataDir, type RunningStack } from './helpers/stack.js'

const README = readFileSync(join(REPO_ROOT, 'README.md'), 'utf8')

/** The walkthrough's shell block from the README quick start. */
function readmeWalkthrough (): string {
  const start = README.indexOf('<!-- section:quickstart -->')
  const block = /```sh\n([\s\S]*?)```/.exec(README.slice(start))
  if (start < 0 || block === null) throw new Error('README has no walkthrough block after <!-- section:quickstart -->')
  return block[1]!
}

t.test('the README walkthrough is the one `portcullis start` prints', async (t) => {
  t.equal(readmeWalkthrough(), walkthrough(DEFAULT_URLS))
})

interface Json { [k: string]: unknown }

async function call (method: string, url: string, opts: { token?: string, body?: unknown, headers?: Record<string, string> } = {}): Promise<{ status: number, headers: Headers, body: Json }> {
  const res = await fetch(url, {
    method,
    headers: {
      ...(opts.token !== undefined ? { authorization: `Bearer ${opts.token}` } : {}),
      ...(opts.body !== undefined ? { 'content-type': 'application/json' } : {}),
      ...opts.headers
    },
    ...(opts.body !== undefined ? { body: JSON.stringify(opts.body) } : {})
  })
  const text = await res.text()
  let body: Json = {}
  try { body = text === '' ? {} : JSON.parse(text) as Json } catch { body = { text } }
  return { status: res.status, headers: res.headers, body }
}

/** `find()` once it returns something (log lines arrive through another process), or its last answer after 5 s. */
async function until (find: () => Json[]): Promise<Json[]> {
  const deadline = Date.now() + 5000
  while (find().length === 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50))
  return find()
}

/** Log records of `proc` with this request id and message. */
async function logged (stack: RunningStack, proc: string, reqId: string, msg: string): Promise<Json[]> {
  return await until(() => stack.logs(proc).map((l) => l.rec).filter((r) => r.reqId === reqId && r.msg === msg))
}

t.test('portcullis start: the whole stack as real processes, walked through as the README does', async (t) => {
  const data = tempDataDir()
  t.teardown(data.remove)
  const ports = await stackPorts()
  const stack = await startStack({ ports, dataDir: data.dir, teardown: (fn) => t.teardown(fn) })
  await stack.waitFor(/Portcullis is running/)
  t.equal(stack.pids.size, 6, 'six child processes')
  t.ok(stack.lines.some((l) => /accounts created now, on the first start/.test(l)), 'demo accounts created and printed')
  const u = stack.urls

  // login
  const login = await call('POST', `${u.auth}/auth/login`, { body: { username: 'alice', password: 'alice-demo-pass' } })
  t.equal(login.status, 200, 'login')
  const access = login.body.access_token as string
  const sub = claimsOf(access).sub as string

  // an order through the gateway, checked by user- and product-service with the same identity
  const order = await call('POST', `${u.gateway}/api/orders`, { token: access, body: { items: [{ productId: 'p-1', quantity: 2 }, { productId: 'p-2', quantity: 1 }] } })
  t.equal(order.status, 201, 'order created through the gateway')
  t.equal(order.body.total, 2 * 1200 + 4500)
  t.equal(order.body.sub, sub)
  const rid = order.body.requestId as string
  t.match(rid, /^[A-Za-z0-9._:-]+$/)
  // The gateway's one access line per request carries the verified sub (auth_success is at debug there).
  const gatewayAuth = await logged(stack, 'gateway', rid, 'request completed')
  t.match(gatewayAuth[0], { sub, statusCode: 201, route: '/api/orders' }, 'the gateway verified alice under this request id')
  const [userSaw] = await logged(stack, 'user', rid, 'request completed')
  t.match(userSaw, { url: '/users/me', sub, statusCode: 200 }, 'user-service saw the same sub and request id')
  const productSaw = await logged(stack, 'product', rid, 'request completed')
  t.same(productSaw.map((r) => [r.url, r.sub]).sort(), [['/products/p-1', sub], ['/products/p-2', sub]], 'product-service too, once per product')
  t.equal((await logged(stack, 'order', rid, 'order created'))[0]?.sub, sub)
  // order-service's background catalog refresh ran as itself, with the demo client's token from auth
  const background = await until(() => stack.logs('product').map((l) => l.rec).filter((r) => r.msg === 'request completed' && r.url === '/products'))
  t.equal(background[0]?.sub, 'order-service', 'a background call carries the service\'s own client-credentials token')
  const list = await call('GET', `${u.gateway}/api/orders`, { token: access })
  t.same((list.body.orders as Json[]).map((o) => o.id), [order.body.id])

  // 403 without the permission
  const bob = await call('POST', `${u.auth}/auth/login`, { body: { username: 'bob', password: 'bob-demo-pass' } })
  const denied = await call('POST', `${u.gateway}/api/orders`, { token: bob.body.access_token as string, body: { items: [{ productId: 'p-1', quantity: 1 }] } })
  t.equal(denied.status, 403, 'bob may not place orders')
  t.match(denied.headers.get('www-authenticate'), /insufficient_scope/)

  // 401 with a tampered token and without one
  const [h, , s] = access.split('.')
  const forged = [h, Buffer.from(JSON.stringify({ ...claimsOf(access), role: 'admin' })).toString('base64url'), s].join('.')
  t.equal((await call('GET', `${u.gateway}/api/orders`, { token: forged })).status, 401, 'tampered token')
  t.equal((await call('GET', `${u.order}/orders`, { token: forged })).status, 401, 'the service itself refuses it too')
  t.equal((await call('GET', `${u.gateway}/api/orders`)).status, 401, 'no token')

  // refresh, then logout: afterwards the refresh token fails
  const pair = await call('POST', `${u.auth}/auth/refresh`, { body: { refresh_token: login.body.refresh_token } })
  t.equal(pair.status, 200, 'refresh')
  t.not(pair.body.refresh_token, login.body.refresh_token, 'the refresh token rotated')
  t.equal((await call('GET', `${u.gateway}/api/orders`, { token: pair.body.access_token as string })).status, 200, 'the refreshed access token works')
  t.equal((await call('POST', `${u.auth}/auth/logout`, { body: { refresh_token: pair.body.refresh_token } })).status, 204, 'logout')
  t.equal((await call('POST', `${u.auth}/auth/refresh`, { body: { refresh_token: pair.body.refresh_token } })).status, 401, 'refresh after logout fails')

  // the README walkthrough itself, pasted into bash with this stack's ports
  let script = readmeWalkthrough()
  const actual: Record<string, string> = { auth: u.auth, gateway: u.gateway, gatewayAdmin: u.gatewayAdmin }
  for (const [k, v] of Object.entries(actual)) script = script.split(DEFAULT_URLS[k as keyof typeof DEFAULT_URLS]).join(v)
  const run = spawnSync('bash', ['-e', '-o', 'pipefail', '-c', script], { cwd: REPO_ROOT, env: { ...process.env, ...stack.env }, encoding: 'utf8', timeout: 60_000 })
  t.equal(run.status, 0, `README walkthrough ran (stderr: ${run.stderr.slice(0, 500)})`)
  for (const expected of [/"total":2400/, /^no token: 401$/m, /^tampered: 401$/m, /^bob orders: 403$/m, /^(200 ){10}429 429 $/m,
    /^with the refreshed token: 200$/m, /^logout: 204$/m, /^refresh after logout: 401$/m, /^portcullis_/m, /^\S+\s+active\s/m]) {
    t.match(run.stdout, expected, `README step output ${String(expected)}`)
  }

  // Ctrl-C (SIGTERM here) stops every process; a second start reuses ./data and its keys
  const kid = headerOf(access).kid
  const pids = [...stack.pids.values()]
  t.equal(await stack.stop(), 0, 'the stack exits 0 on SIGTERM')
  t.ok(pids.every(gone), 'every child process is gone')
  const again = await startStack({ ports, dataDir: data.dir, teardown: (fn) => t.teardown(fn) })
  await again.waitFor(/Portcullis is running/)
  t.ok(again.lines.some((l) => /accounts from the first start/.test(l)), 'demo accounts are not created twice')
  const relog = await call('POST', `${u.auth}/auth/login`, { body: { username: 'alice', password: 'alice-demo-pass' } })
  t.equal(relog.status, 200)
  t.equal(headerOf(relog.body.access_token as string).kid, kid, 'the same signing key after a restart')
  t.equal((await call('GET', `${u.gateway}/api/orders`, { token: access })).status, 200, 'a token from before the restart still works')
  t.equal(await again.stop(), 0)
})
