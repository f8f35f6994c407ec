import Fastify, { type FastifyInstance } from 'fastify'
import t from 'tap'
import jwksAuth, { type JwksAuthOptions } from '@portcullis/jwks-auth'
import metrics from '@portcullis/metrics'
import { rsaKey, startTestIssuer, type IssuerMode, type TestIssuer } from './helpers/issuer.js'

interface LogLine { event?: string, reason?: string }
const MIN = 60_000

async function buildApp (issuer: TestIssuer, clock: { ms: number }, lines: LogLine[], opts: Partial<JwksAuthOptions> = {}): Promise<FastifyInstance> {
  const app = Fastify({ logger: { level: 'info', stream: { write: (s: string) => { lines.push(JSON.parse(s) as LogLine) } } } })
  await app.register(metrics, { defaultMetrics: false })
  await app.register(jwksAuth, {
    issuers: [{ issuer: issuer.url, audience: 'portcullis' }],
    now: () => clock.ms,
    refreshInterval: 3600, // the test drives refreshes itself, on the injected clock
    ...opts
  })
  app.get('/me', async (req) => ({ sub: req.user?.sub }))
  await app.ready()
  await app.jwksAuth.refresh()
  return app
}

async function call (app: FastifyInstance, token: string, lines: LogLine[]): Promise<{ status: number, reason?: string }> {
  const before = lines.length
  const res = await app.inject({ url: '/me', headers: { authorization: `Bearer ${token}` } })
  return { status: res.statusCode, reason: lines.slice(before).find((l) => l.event === 'auth_failure')?.reason }
}

const OUTAGES: Array<[string, IssuerMode | 'down']> = [
  ['down (connections refused)', 'down'],
  ['dropping connections', 'reset'],
  ['answering 503', 'error']
]
for (const [what, mode] of OUTAGES) {
  t.test(`issuer ${what} for 10 simulated minutes`, async (t) => {
    const key = rsaKey({ label: 'outage' })
    const issuer = await startTestIssuer({ keys: [key] })
    t.teardown(() => issuer.close())
    const clock = { ms: Date.now() }
    const t0 = clock.ms
    const lines: LogLine[] = []
    // Defaults: keys fresh for 5 min, then served stale for at most 60 min more.
    const app = await buildApp(issuer, clock, lines)
    t.teardown(() => app.close())
    const longLived = issuer.sign({ jti: 'cached' }, { now: Math.floor(t0 / 1000), ttl: 24 * 3600 })
    t.equal((await call(app, longLived, lines)).status, 200, 'verified once, now cached')

    if (mode === 'down') await issuer.down()
    else issuer.mode = mode
    for (let minute = 1; minute <= 10; minute++) {
      clock.ms = t0 + minute * MIN
      await app.jwksAuth.refresh()
      const token = issuer.sign({}, { now: Math.floor(clock.ms / 1000) })
      t.equal((await call(app, token, lines)).status, 200, `minute ${minute}: a valid token passes`)
      t.equal((await call(app, longLived, lines)).status, 200, `minute ${minute}: a cached token passes`)
    }
    const text = await app.metricsRegistry.metrics()
    t.match(text, new RegExp(`portcullis_jwks_stale_served_total\\{issuer="${issuer.url}"\\} 1\\d`), 'stale serving is counted (minutes 6-10)')
    t.match(text, /portcullis_jwks_refresh_total\{result="failure"\} 10/)

    clock.ms = t0 + 5 * MIN + 60 * MIN + 1000 // past freshness (5 min) + maximum stale age (60 min)
    await app.jwksAuth.refresh()
    const late = await call(app, issuer.sign({}, { now: Math.floor(clock.ms / 1000) }), lines)
    t.same(late, { status: 401, reason: 'jwks_unavailable' }, 'after the maximum stale age: jwks_unavailable')
    t.same(await call(app, longLived, lines), { status: 401, reason: 'jwks_unavailable' }, 'the cached token too')

    if (mode === 'down') await issuer.up()
    issuer.mode = 'ok'
    clock.ms += MIN
    await app.jwksAuth.refresh()
    t.equal((await call(app, issuer.sign({}, { now: Math.floor(clock.ms / 1000) }), lines)).status, 200, 'recovery needs no restart')
    t.equal((await call(app, longLived, lines)).status, 200)
  })
}

t.test('an issuer answering garbage (not network/5xx) gets no stale grace', async (t) => {
  const issuer = await startTestIssuer({ keys: [rsaKey({ label: 'outage' })] })
  t.teardown(() => issuer.close())
  const clock = { ms: Date.now() }
  const lines: LogLine[] = []
  const app = await buildApp(issuer, clock, lines, { keyCacheTtl: 60 })
  t.teardown(() => app.close())
  issuer.rawJwks = 'not a jwks'
  clock.ms += 30_000
  await app.jwksAuth.refresh()
  t.equal((await call(app, issuer.sign({}, { now: Math.floor(clock.ms / 1000) }), lines)).status, 200, 'still fresh')
  clock.ms += 31_000
  await app.jwksAuth.refresh()
  t.same(await call(app, issuer.sign({}, { now: Math.floor(clock.ms / 1000) }), lines), { status: 401, reason: 'jwks_unavailable' })
  issuer.rawJwks = null
  await app.jwksAuth.refresh()
  t.equal((await call(app, issuer.sign({}, { now: Math.floor(clock.ms / 1000) }), lines)).status, 200)
})

t.test('an issuer that never answered: jwks_unavailable, not ready; ready once it answers', async (t) => {
  const issuer = await startTestIssuer({ keys: [rsaKey({ label: 'outage' })] })
  t.teardown(() => issuer.close())
  issuer.mode = 'error'
  const clock = { ms: Date.now() }
  const lines: LogLine[] = []
  const app = await buildApp(issuer, clock, lines)
  t.teardown(() => app.close())
  t.equal(app.jwksAuth.isReady(), false)
  t.same(await call(app, issuer.sign(), lines), { status: 401, reason: 'jwks_unavailable' })
  issuer.mode = 'ok'
  await app.jwksAuth.refresh()
  t.equal(app.jwksAuth.isReady(), true)
  t.equal((await call(app, issuer.sign(), lines)).status, 200)
})

t.test('a hanging issuer is cut off by the fetch timeout, and later fetches still work', async (t) => {
  const key = rsaKey({ label: 'outage' })
  const late = rsaKey({ label: 'outage-late' })
  const issuer = await startTestIssuer({ keys: [key] })
  t.teardown(() => issuer.close())
  const clock = { ms: Date.now() }
  const lines: LogLine[] = []
  const app = await buildApp(issuer, clock, lines, { fetchTimeout: 0.2, kidMissCooldown: 1 })
  t.teardown(() => app.close())
  issuer.mode = 'hang'
  issuer.addKey(late)
  const started = Date.now()
  await app.jwksAuth.refresh()
  const kidMiss = await call(app, issuer.sign({}, { key: late }), lines)
  t.same(kidMiss, { status: 401, reason: 'jwks_unavailable' }, 'the kid-miss fetch timed out too')
  // two 0.2 s timeouts; without them each fetch would wait for the 5 s default (or hang): slack for a slow machine
  t.ok(Date.now() - started < 4000, 'both fetches were aborted by their timeouts')
  issuer.mode = 'ok'
  clock.ms += 2000 // past the kid-miss cooldown
  // More than fetchTimeout after the first fetch: a single shared AbortSignal would abort this fetch.
  t.equal((await call(app, issuer.sign({ jti: 'x' }, { key: late }), lines)).status, 200, 'the next kid-miss fetch succeeds')
})

t.test('closing the app aborts a refresh stuck on a hanging issuer', async (t) => {
  // With a 10-minute fetch timeout, only the abort on close can end this refresh within the test timeout.
  t.setTimeout(30_000)
  const issuer = await startTestIssuer({ keys: [rsaKey({ label: 'outage' })] })
  t.teardown(() => issuer.close())
  const clock = { ms: Date.now() }
  const app = await buildApp(issuer, clock, [], { fetchTimeout: 600 })
  issuer.mode = 'hang'
  const fetches = issuer.fetches
  const pending = app.jwksAuth.refresh()
  await issuer.waitForFetches(fetches + 1)
  await app.close()
  await pending
  t.pass('the refresh settled once the app closed')
})

t.test('closing the app during a fetch from a hanging issuer: close does not wait, and no fetch failure is logged', async (t) => {
  const issuer = await startTestIssuer({ keys: [rsaKey({ label: 'closing' })] })
  t.teardown(() => issuer.close())
  const lines: LogLine[] = []
  const app = await buildApp(issuer, { ms: Date.now() }, lines, { fetchTimeout: 30 })
  issuer.mode = 'hang'
  const before = issuer.fetches
  const pending = app.jwksAuth.refresh()
  await issuer.waitForFetches(before + 1)
  const started = Date.now()
  await app.close()
  await pending
  t.ok(Date.now() - started < 10_000, 'close cut the fetch off (its timeout is 30 s)')
  t.same(lines.filter((l) => l.event === 'jwks_fetch_failed'), [], 'no jwks_fetch_failed: the issuer did nothing wrong, the app was closing')
})
