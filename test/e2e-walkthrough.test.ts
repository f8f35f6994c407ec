import { spawnSync } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { readStackState, STACK_STATE_FILE } from '../store/stack-state.js'
import { DEFAULT_URLS, walkthrough } from '../cli/stack/walkthrough.js'
import { call, claimsOf, gone, headerOf, REPO_ROOT, runningStack, stackPorts, startStack, type RunningStack } from './helpers/stack.js'

// The stack's start and restart, and six pastes of the walkthrough (each about a dozen processes).
t.setTimeout(240_000)

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
  const { stack, ports, dataDir } = await runningStack(t)
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
  // the session's access tokens (the first one too: same sid) are refused by the gateway and the services within a second
  let refusedAfter = Number.POSITIVE_INFINITY
  for (const start = Date.now(); Date.now() - start < 3000;) {
    const g = (await call('GET', `${u.gateway}/api/orders`, { token: access })).status
    const s = (await call('GET', `${u.order}/orders`, { token: pair.body.access_token as string })).status
    if (g === 401 && s === 401) { refusedAfter = Date.now() - start; break }
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  t.ok(refusedAfter <= 1000, `after logout the session's access tokens are refused at the gateway and at order-service (${refusedAfter} ms)`)
  t.equal((await call('POST', `${u.auth}/auth/refresh`, { body: { refresh_token: pair.body.refresh_token } })).status, 401, 'refresh after logout fails')

  // The stack's state file names it and its store; a command on the folder with another store refuses.
  const state = readStackState(dataDir)
  t.match(state, { pid: stack.proc.pid, dataDir: dataDir, store: { engine: 'sqlite', path: join(dataDir, 'portcullis.db') } }, `${STACK_STATE_FILE} names the stack and its store`)
  t.match(stack.lines.find((l) => l.startsWith('portcullis start: store: ')), `portcullis start: store: SQLite ${join(dataDir, 'portcullis.db')}`, 'the stack names its store')
  const cli = (args: string[], env: Record<string, string>): ReturnType<typeof spawnSync> =>
    spawnSync(process.execPath, ['bin/portcullis.js', ...args], { cwd: REPO_ROOT, env: { ...process.env, ...stack.env, ...env }, encoding: 'utf8', timeout: 60_000 })
  const elsewhere = cli(['users', 'list'], { DATABASE_URL: 'postgres://nobody@127.0.0.1:1/elsewhere' })
  t.equal(elsewhere.status, 1)
  t.match(String(elsewhere.stderr), new RegExp(`^portcullis: the stack running on ${dataDir} \\(pid ${stack.proc.pid!}, .*\\) uses SQLite ${dataDir}/portcullis\\.db, but this command's settings name PostgreSQL 127\\.0\\.0\\.1:1, database elsewhere`), 'refused, naming both stores')
  const second = spawnSync(process.execPath, ['bin/portcullis.js', 'start'], {
    cwd: REPO_ROOT, env: { ...process.env, ...stack.env, ...Object.fromEntries(Object.entries(await stackPorts()).map(([k, v]) => [k, String(v)])) }, encoding: 'utf8', timeout: 60_000
  })
  t.equal(second.status, 1)
  t.match(String(second.stderr), new RegExp(`^portcullis: another stack runs on ${dataDir} \\(pid ${stack.proc.pid!}, `), 'a second stack on the same folder refuses to start')

  // The README walkthrough itself, pasted into bash with this stack's ports, again and again: six
  // pastes in a row within five minutes met auth's per-username login limit (5 per 5 minutes) before
  // the demo stack raised it. /api/products allows 10 requests a minute per caller: the first paste
  // sees ten 200s, later ones within the minute mostly 429s (at least two in any twelve).
  let script = readmeWalkthrough()
  const actual: Record<string, string> = { auth: u.auth, gateway: u.gateway, gatewayAdmin: u.gatewayAdmin }
  for (const [k, v] of Object.entries(actual)) script = script.split(DEFAULT_URLS[k as keyof typeof DEFAULT_URLS]).join(v)
  for (let paste = 1; paste <= 6; paste++) {
    const run = spawnSync('bash', ['-e', '-o', 'pipefail', '-c', script], { cwd: REPO_ROOT, env: { ...process.env, ...stack.env }, encoding: 'utf8', timeout: 60_000 })
    t.equal(run.status, 0, `paste ${paste}: the README walkthrough ran (stderr: ${run.stderr.slice(0, 500)})`)
    for (const expected of [/"total":2400/, /^no token: 401$/m, /^tampered: 401$/m, /^bob orders: 403$/m,
      /^with the refreshed token: 200$/m, /^logout: 204$/m, /^refresh after logout: 401$/m, /^access token after logout: 401$/m, /^portcullis_/m, /^\S+\s+active\s/m]) {
      t.match(run.stdout, expected, `paste ${paste}: README step output ${String(expected)}`)
    }
    const codes = /^((?:\d{3} ){12})$/m.exec(run.stdout)?.[1]?.trim().split(' ') ?? []
    if (paste === 1) t.same(codes, [...Array(10).fill('200'), '429', '429'], 'paste 1: ten 200s then 429 429')
    else t.ok(codes.length === 12 && codes.every((c) => c === '200' || c === '429') && codes.filter((c) => c === '429').length >= 2, `paste ${paste}: the products limit still counts this minute (${codes.join(' ')})`)
    t.same(run.stderr.trim().split('\n'), [`portcullis: store: SQLite ${join(dataDir, 'portcullis.db')}`], `paste ${paste}: stderr is the keys command's store line alone`)
  }

  // An error answer (here a wrong password) is one line naming the error, never a stack trace; pasted
  // into an interactive shell (no -e) the later steps go on and show what a missing token gets.
  const wrong = spawnSync('bash', ['-c', script.replace('alice-demo-pass', 'not-her-password')], { cwd: REPO_ROOT, env: { ...process.env, ...stack.env }, encoding: 'utf8', timeout: 60_000 })
  t.match(wrong.stderr, /^no access_token: invalid_credentials \(invalid username or password\)$/m, 'the refused login is named')
  t.notMatch(wrong.stderr, /TypeError|SyntaxError|\n\s+at /, 'no stack trace')
  t.match(wrong.stdout, /^tampered: 401$/m, 'the next steps still run')

  // Ctrl-C (SIGTERM here) stops every process; a second start reuses ./data and its keys
  const kid = headerOf(access).kid
  const pids = [...stack.pids.values()]
  t.equal(await stack.stop(), 0, 'the stack exits 0 on SIGTERM')
  t.ok(pids.every(gone), 'every child process is gone')
  t.notOk(existsSync(join(dataDir, STACK_STATE_FILE)), 'the state file went with it')
  // SIGINT, as Ctrl-C: with SIGTERM auth and each service would first wait out its drain delay (5 s each, one after another).
  t.same(['auth', 'rotation'].map((p) => stack.logs(p).find((l) => l.rec.event === 'shutdown')?.rec.signal), ['SIGINT', 'SIGINT'], 'the children are stopped with SIGINT')
  t.same(['user', 'product', 'order'].map((p) => stack.logs(p).find((l) => l.rec.msg === 'stopping')?.rec.signal), ['SIGINT', 'SIGINT', 'SIGINT'])
  const again = await startStack({ ports, dataDir, teardown: (fn) => t.teardown(fn) })
  await again.waitFor(/Portcullis is running/)
  t.ok(again.lines.some((l) => /accounts from the first start/.test(l)), 'demo accounts are not created twice')
  const relog = await call('POST', `${u.auth}/auth/login`, { body: { username: 'alice', password: 'alice-demo-pass' } })
  t.equal(relog.status, 200)
  t.equal(headerOf(relog.body.access_token as string).kid, kid, 'the same signing key after a restart')
  t.equal((await call('GET', `${u.gateway}/api/orders`, { token: bob.body.access_token as string })).status, 200, 'a token from before the restart still works')
  // alice's first session was logged out above (after a refresh): its access tokens are revoked too, restart or not
  t.equal((await call('GET', `${u.gateway}/api/orders`, { token: access })).status, 401, 'an access token of a logged-out session stays refused after the restart')
  t.equal(await again.stop(), 0)
})
