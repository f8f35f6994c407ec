import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { setTimeout as delay } from 'node:timers/promises'
import t, { type Test } from 'tap'
import { drain, drainDelayFor, DrainState, DRAINING_REASON } from '../lib/drain.js'
import { buildService, buildServiceAdmin } from '../services/bootstrap.js'
import { DEFAULT_ADMIN_PORTS, DEFAULT_ISSUER, DEFAULT_PORTS, serviceConfigFromEnv } from '../services/config.js'
import { DEFAULT_AUTH_ISSUER } from '../auth/config.js'
import { keySecretsFromList } from '../store/crypto.js'
import { openDb } from '../store/index.js'
import { openKeyStore } from '../store/keys.js'
import { startTestIssuer } from './helpers/issuer.js'
import { freePorts } from './helpers/ports.js'

// Admin listeners apart from the public ones, and the SIGTERM drain: readiness 503 first, the public
// listener still serving for the drain delay, then closed.

const CLI = fileURLToPath(new URL('../cli/portcullis.ts', import.meta.url))
const CWD = fileURLToPath(new URL('..', import.meta.url))
/** Long enough that the checks made during it cannot outlast it on a loaded 2-core machine. */
const DRAIN = 3

t.test('services config: an admin host and port of their own, a drain delay, the issuer at auth\'s default', async (t) => {
  const user = serviceConfigFromEnv('user', {})
  t.match(user, { host: '127.0.0.1', port: 3001, adminHost: '127.0.0.1', adminPort: 8093, drainDelay: 5 })
  t.same(DEFAULT_ADMIN_PORTS, { user: 8093, order: 8094, product: 8095 })
  t.equal(DEFAULT_ISSUER, DEFAULT_AUTH_ISSUER, 'the services trust the auth service where it listens by default')
  const open = serviceConfigFromEnv('order', { SERVICE_HOST: '0.0.0.0', ORDER_SERVICE_ADMIN_PORT: '9999', SERVICE_DRAIN_DELAY: '250ms' })
  t.match(open, { host: '0.0.0.0', port: DEFAULT_PORTS.order, adminHost: '127.0.0.1', adminPort: 9999, drainDelay: 0.25 },
    'SERVICE_HOST opens the public listener only')
  t.equal(serviceConfigFromEnv('product', { SERVICE_ADMIN_HOST: '0.0.0.0' }).adminHost, '0.0.0.0')
  t.throws(() => serviceConfigFromEnv('user', { USER_SERVICE_PORT: '4000', USER_SERVICE_ADMIN_PORT: '4000' }),
    { code: 'PORTCULLIS_CONFIG', message: 'Invalid configuration: USER_SERVICE_ADMIN_PORT: must differ from USER_SERVICE_PORT (4000)' })
  t.throws(() => serviceConfigFromEnv('user', { USER_SERVICE_ADMIN_PORT: 'admin' }), { message: /USER_SERVICE_ADMIN_PORT: expected an integer/ })
  t.throws(() => serviceConfigFromEnv('user', { SERVICE_DRAIN_DELAY: 'soon' }), { message: /SERVICE_DRAIN_DELAY: expected a duration/ })
})

t.test('drain: SIGTERM waits the delay, readiness already off; SIGINT (Ctrl-C) and errors do not wait', async (t) => {
  t.equal(drainDelayFor('SIGTERM', 5), 5)
  t.equal(drainDelayFor('SIGINT', 5), 0)
  t.equal(drainDelayFor(undefined, 5), 0)
  const lines: object[] = []
  const log = { info: (obj: object) => { lines.push(obj) } }
  const term = new DrainState()
  const started = Date.now()
  const waiting = drain(term, 'SIGTERM', 0.3, log)
  t.equal(term.draining, true, 'draining from the signal on, before the delay ends')
  await waiting
  t.ok(Date.now() - started >= 290, `waited ${Date.now() - started} ms of 300`)
  t.match(lines, [{ event: 'drain', signal: 'SIGTERM', delay: '300ms' }])
  const int = new DrainState()
  const at = Date.now()
  await drain(int, 'SIGINT', 30, log)
  t.ok(int.draining && Date.now() - at < 100, 'SIGINT: draining, no wait')
})

t.test('a service serves health and metrics on its admin app only; readiness follows the JWKS and the drain', async (t) => {
  const issuer = await startTestIssuer()
  t.teardown(() => issuer.close())
  const app = await buildService(serviceConfigFromEnv('product', { AUTH_ISSUER: issuer.url }), { logger: false, defaultMetrics: false })
  const state = new DrainState()
  const admin = await buildServiceAdmin(app, state)
  t.teardown(async () => { await app.close(); await admin.close() })
  await app.ready()
  const token = issuer.sign({ sub: 'u-1', permissions: [] })
  t.equal((await app.inject({ url: '/products', headers: { authorization: `Bearer ${token}` } })).statusCode, 200)
  t.equal((await admin.inject('/health/ready')).statusCode, 200, 'ready: the issuer\'s JWKS is fetched')
  t.equal((await admin.inject('/health/live')).statusCode, 200)
  const metrics = (await admin.inject('/metrics')).body
  t.match(metrics, /portcullis_auth_requests_total\{result="success"/, 'jwks-auth\'s metrics in the app\'s registry')
  t.match(metrics, /http_request_duration_seconds_bucket\{[^}]*route="\/products"/, 'HTTP metrics by route pattern')
  for (const path of ['/metrics', '/health/ready', '/health/live']) {
    t.equal((await app.inject(path)).statusCode, 401, `${path} is not on the public listener (401: no token, as for any unknown path)`)
  }
  state.start()
  const draining = await admin.inject('/health/ready')
  t.equal(draining.statusCode, 503)
  t.same(draining.json(), { status: 'not_ready', reason: DRAINING_REASON })
  t.equal((await app.inject({ url: '/products', headers: { authorization: `Bearer ${token}` } })).statusCode, 200, 'still serving while draining')
})

t.test('a service is not ready before the issuer\'s JWKS is fetched', async (t) => {
  const issuer = await startTestIssuer()
  issuer.mode = 'error'
  t.teardown(() => issuer.close())
  const app = await buildService(serviceConfigFromEnv('user', { AUTH_ISSUER: issuer.url }), { logger: false, defaultMetrics: false })
  const admin = await buildServiceAdmin(app, new DrainState())
  t.teardown(async () => { await app.close(); await admin.close() })
  await app.ready()
  const res = await admin.inject('/health/ready')
  t.equal(res.statusCode, 503)
  t.match(res.json(), { reason: /JWKS has not been fetched/ })
})

interface Proc { child: ChildProcessWithoutNullStreams, output: () => string, exited: Promise<[number | null, NodeJS.Signals | null]> }

function startCli (t: Test, args: string[], env: Record<string, string>): Proc {
  const child = spawn(process.execPath, ['--import', 'tsx', CLI, ...args], { cwd: CWD, env: { ...process.env, LOG_LEVEL: 'info', ...env }, stdio: 'pipe' })
  let output = ''
  child.stdout.on('data', (d: Buffer) => { output += d.toString() })
  child.stderr.on('data', (d: Buffer) => { output += d.toString() })
  const exited = once(child, 'exit') as Promise<[number | null, NodeJS.Signals | null]>
  t.teardown(async () => { if (child.exitCode === null && child.signalCode === null) { child.kill('SIGKILL'); await exited } })
  return { child, output: () => output, exited }
}

async function waitForStatus (url: string, status: number, proc: Proc, deadline = Date.now() + 20_000): Promise<Response> {
  for (;;) {
    try {
      const res = await fetch(url)
      if (res.status === status) return res
      await res.body?.cancel()
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline || proc.child.exitCode !== null) throw new Error(`${url} never answered ${status}; output:\n${proc.output()}`)
    await delay(25)
  }
}

/**
 * The drain as Kubernetes meets it: SIGTERM; readiness 503 within a moment; a request on the public
 * port answered after that; exit 0 only once the drain delay has passed; the public port closed.
 */
async function checkDrain (t: Test, proc: Proc, admin: string, publicRequest: () => Promise<Response>): Promise<void> {
  const signalled = Date.now()
  proc.child.kill('SIGTERM')
  const notReady = await waitForStatus(`${admin}/health/ready`, 503, proc, signalled + DRAIN * 1000)
  const toNotReady = Date.now() - signalled
  t.same(await notReady.json(), { status: 'not_ready', reason: DRAINING_REASON }, `readiness 503 ${toNotReady} ms after SIGTERM`)
  const res = await publicRequest()
  const answeredAt = Date.now() - signalled
  t.equal(res.status, 200, `a public request after readiness turned 503 is answered (${answeredAt} ms after SIGTERM)`)
  t.ok(answeredAt < DRAIN * 1000, 'within the drain delay')
  const [code] = await proc.exited
  const exitedAt = Date.now() - signalled
  t.equal(code, 0, 'clean exit')
  t.ok(exitedAt >= DRAIN * 1000, `kept serving for the whole drain delay: exited ${exitedAt} ms after SIGTERM (delay ${DRAIN} s)`)
  await t.rejects(publicRequest(), 'the public listener is closed once the process is gone')
  const events = proc.output().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as { event?: string, level: number })
  t.match(events.find((e) => e.event === 'drain'), { signal: 'SIGTERM', delay: `${DRAIN}s` }, 'the drain is logged')
  t.notOk(events.some((e) => e.level >= 50), 'no error logged')
}

t.test('portcullis auth on SIGTERM: readiness 503 while the public listener still answers, for AUTH_DRAIN_DELAY', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-drain-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const secret = randomBytes(32).toString('base64url')
  const db = openDb({ sqlitePath: join(dir, 'portcullis.db') })
  await (await openKeyStore(db, { secrets: keySecretsFromList([secret]) })).rotateNow({ activateNow: true })
  await db.close()
  const [port, adminPort] = await freePorts(2) as [number, number]
  const proc = startCli(t, ['auth'], {
    PORTCULLIS_DATA_DIR: dir,
    PORTCULLIS_KEY_SECRETS: secret,
    AUTH_PORT: String(port),
    AUTH_ADMIN_PORT: String(adminPort),
    AUTH_DRAIN_DELAY: `${DRAIN}s`
  })
  const admin = `http://127.0.0.1:${adminPort}`
  await waitForStatus(`${admin}/health/ready`, 200, proc)
  await checkDrain(t, proc, admin, () => fetch(`http://127.0.0.1:${port}/.well-known/jwks.json`))
})

t.test('portcullis services product on SIGTERM: readiness 503 while an authenticated request is still served, for SERVICE_DRAIN_DELAY', async (t) => {
  const issuer = await startTestIssuer()
  t.teardown(() => issuer.close())
  const [port, adminPort] = await freePorts(2) as [number, number]
  const proc = startCli(t, ['services', 'product'], {
    AUTH_ISSUER: issuer.url,
    PRODUCT_SERVICE_PORT: String(port),
    PRODUCT_SERVICE_ADMIN_PORT: String(adminPort),
    SERVICE_DRAIN_DELAY: `${DRAIN}s`
  })
  const admin = `http://127.0.0.1:${adminPort}`
  await waitForStatus(`${admin}/health/ready`, 200, proc)
  const token = issuer.sign({ sub: 'u-1', permissions: [] })
  await checkDrain(t, proc, admin, () => fetch(`http://127.0.0.1:${port}/products`, { headers: { authorization: `Bearer ${token}` } }))
})
