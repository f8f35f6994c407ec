/**
 * Drill 10: revocation everywhere within a second, on each transport in turn: `feed` (a SQLite
 * store, verifiers following `<issuer>/auth/revocations`), `postgres` (a PostgreSQL store: what the
 * CLI writes reaches the auth service by LISTEN/NOTIFY, verifiers on its feed) and `redis` (a
 * PostgreSQL store and REDIS_URL: the auth service publishes to Redis, the gateways say
 * `revocations: redis` and the services AUTH_REVOCATIONS_URL=redis://). Each time: the real auth
 * service, two gateways and two example services (user-service, product-service), each verifying
 * with jwks-auth. A steady stream of requests
 * with tokens nobody revokes runs on all four the whole time. Then, one after another: LOGOUTS
 * logouts (session), JTI_REVOKES `POST /oauth/revoke` of access tokens (token), USER_REVOKES
 * `portcullis users revoke` from another process (user), SESSION_REVOKES `portcullis sessions
 * revoke <sid>` (session, by an operator) and one `portcullis keys revoke` (key). After each, every
 * verifier is polled with the revoked token every POLL_MS until it answers 401; the time counts from
 * the request's answer (logout, /oauth/revoke) or from the command's return (the CLI's: the
 * revocation is committed then; the command's own run, ~1 s of Node start-up, is reported apart as
 * cli_run_ms_max).
 *
 * Promises: every revoked token refused by all four verifiers, p99 over all (revocation, verifier)
 * pairs within 1 s; the steady stream 0 false 401 and 0 5xx; a verifier restarted afterwards refuses
 * the revoked tokens from its first request; every process alive.
 */
import { Drill } from './lib/summary.js'
import { percentile, sleep } from './lib/closed-loop.js'
import { startToyUpstream } from './lib/toy-upstream.js'
import { randomBytes } from 'node:crypto'
import { Redis } from 'ioredis'
import { revocationRedisNames } from '@portcullis/core'
import { authPorts, baseEnv, createDatabase, DRILL_REDIS_URL, jwksUrl, requireBackends, startAuth, startGateway, startServices, stopAll, type Proc } from './lib/processes.js'
import { addUser, login } from './lib/tokens.js'
import { runCli } from '../test/helpers/rotation-workers.js'

const LOGOUTS = 68
const JTI_REVOKES = 25
const USER_REVOKES = 4
const SESSION_REVOKES = 4
const POLL_MS = 10
const GIVE_UP_MS = 5000
const P99_MAX_MS = 1000

const claimsOf = (jwt: string): Record<string, unknown> => JSON.parse(Buffer.from(jwt.split('.')[1]!, 'base64url').toString('utf8')) as Record<string, unknown>

const TRANSPORTS = ['feed', 'postgres', 'redis'] as const
type Transport = typeof TRANSPORTS[number]

type DrillLike = Pick<Drill, 'check' | 'figure' | 'log' | 'cleanup'>

await new Drill('10-revocation').run(async (d) => {
  d.cleanup(() => stopAll())
  if (!await requireBackends(d, { postgres: true, redis: true })) return
  const up = await startToyUpstream('api')
  d.cleanup(() => up.close())
  for (const transport of TRANSPORTS) {
    await runTransport(d, transport, up.url)
    await stopAll()
  }
})

/** One transport: its own store (and Redis names), auth, two gateways, the services; figures and checks prefixed with its name. */
async function runTransport (drill: DrillLike, transport: Transport, upstream: string): Promise<void> {
  const d: DrillLike = {
    check: (ok, what) => drill.check(ok, `${transport}: ${what}`),
    figure: (name, value) => drill.figure(`${transport}_${name}`, value),
    log: (line) => drill.log(`${transport}: ${line}`),
    cleanup: (fn) => drill.cleanup(fn)
  }
  const issuer = `http://portcullis-drill-${randomBytes(4).toString('hex')}.invalid`
  const extra: Record<string, string> = { LOG_LEVEL: 'warn', AUTH_ISSUER: issuer }
  if (transport !== 'feed') {
    const db = await createDatabase()
    drill.cleanup(() => db.drop())
    extra.DATABASE_URL = db.url
  }
  if (transport === 'redis') {
    extra.REDIS_URL = DRILL_REDIS_URL
    drill.cleanup(async () => {
      const redis = new Redis(DRILL_REDIS_URL, { lazyConnect: true, maxRetriesPerRequest: 0 })
      await redis.connect()
      await redis.del(revocationRedisNames(issuer).inForce).finally(() => redis.disconnect())
    })
  }
  const env = baseEnv(extra)
  const rotate = await runCli(['keys', 'rotate'], env)
  if (rotate.code !== 0) throw new Error(`portcullis keys rotate failed: ${rotate.stdout}${rotate.stderr}`)
  const [ap] = await authPorts(1) as [{ port: number, adminPort: number }]
  const feed = transport === 'redis' ? 'redis' : `http://127.0.0.1:${ap.port}/auth/revocations`
  const auth = await startAuth({ env, ports: ap })
  const routes = {
    issuers: [{ issuer: env.AUTH_ISSUER!, audience: 'portcullis', jwksUri: jwksUrl(ap), revocations: feed }],
    rateLimit: false,
    routes: [{ name: 'api', prefix: '/api', upstream }]
  }
  const svcEnv = { ...env, AUTH_JWKS_URL: jwksUrl(ap), AUTH_REVOCATIONS_URL: transport === 'redis' ? DRILL_REDIS_URL : feed }
  const [g1, g2, services] = await Promise.all([
    startGateway({ env, routes, name: 'gateway-1' }),
    startGateway({ env, routes, name: 'gateway-2' }),
    startServices({ env: svcEnv })
  ])
  const verifiers: Array<{ name: string, url: string }> = [
    { name: 'gateway-1', url: `${g1.base}/api/x` },
    { name: 'gateway-2', url: `${g2.base}/api/x` },
    { name: 'user-service', url: `${services.user.base}/users/me` },
    { name: 'product-service', url: `${services.product.base}/products` }
  ]
  const call = async (url: string, token: string): Promise<number> => {
    try {
      const r = await fetch(url, { headers: { authorization: `Bearer ${token}` }, signal: AbortSignal.timeout(5000) })
      await r.arrayBuffer()
      return r.status
    } catch {
      return 0
    }
  }

  // the users: one per user revocation, one for everything else, one nobody revokes (the steady stream)
  const main = await addUser(env)
  const steadyUser = await addUser(env)
  const revokedUsers = await Promise.all(Array.from({ length: USER_REVOKES }, () => addUser(env)))
  const steady = await login(auth, steadyUser)
  for (const v of verifiers) {
    const s = await call(v.url, steady.token)
    if (s !== 200) throw new Error(`${v.name} answered ${s} to a fresh token`)
  }

  // the steady stream: round-robin over the verifiers, ~200 requests a second in all
  let running = true
  let steadyToken = steady.token
  let phase = 'start'
  const false401By: Record<string, number> = {}
  const steadyCount = { ok: 0, false401: 0, fivexx: 0, other: 0 }
  const streamLoop = async (): Promise<void> => {
    let i = 0
    while (running) {
      const v = verifiers[i++ % verifiers.length]!
      const s = await call(v.url, steadyToken)
      if (s === 200) steadyCount.ok++
      else if (s === 401) {
        steadyCount.false401++
        const k = `${phase}/${v.name}`
        false401By[k] = (false401By[k] ?? 0) + 1
      }
      else if (s >= 500 || s === 0) steadyCount.fivexx++
      else steadyCount.other++
      await sleep(5)
    }
  }
  let stream = streamLoop()

  const latencies: number[] = []
  const byKind: Record<string, number[]> = {}
  let unrefused = 0
  /** Polls every verifier with the token until each answers 401; records the time from `since`. */
  const measure = async (kind: string, token: string, since: number): Promise<void> => {
    await Promise.all(verifiers.map(async (v) => {
      for (;;) {
        const s = await call(v.url, token)
        const elapsed = Date.now() - since
        if (s === 401) {
          latencies.push(elapsed)
          ;(byKind[kind] ??= []).push(elapsed)
          return
        }
        if (elapsed > GIVE_UP_MS) {
          unrefused++
          d.log(`${kind}: ${v.name} still answers ${s} ${elapsed} ms after the revocation`)
          return
        }
        await sleep(POLL_MS)
      }
    }))
  }
  const revokedTokens: string[] = []
  /** How long each CLI command ran (Node's start-up, the store, the commit): the clock of its revocation starts when it returns. */
  const cliRuns: number[] = []

  phase = 'logout'
  for (let i = 0; i < LOGOUTS; i++) {
    const s = await login(auth, main)
    const r = await fetch(`${auth.base}/auth/logout`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ refresh_token: s.refresh }) })
    if (r.status !== 204) throw new Error(`logout answered ${r.status}`)
    await measure('logout', s.token, Date.now())
    revokedTokens.push(s.token)
  }
  phase = 'jti'
  for (let i = 0; i < JTI_REVOKES; i++) {
    const s = await login(auth, main)
    const r = await fetch(`${auth.base}/oauth/revoke`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: `token=${s.token}` })
    if (r.status !== 200) throw new Error(`/oauth/revoke answered ${r.status}`)
    await measure('jti', s.token, Date.now())
    revokedTokens.push(s.token)
  }
  phase = 'user'
  for (const u of revokedUsers) {
    const s = await login(auth, u)
    const t0 = Date.now()
    const cli = await runCli(['users', 'revoke', u.username], env)
    if (cli.code !== 0) throw new Error(`users revoke: ${cli.stdout}${cli.stderr}`)
    cliRuns.push(Date.now() - t0)
    await measure('user', s.token, Date.now())
    revokedTokens.push(s.token)
  }
  phase = 'session'
  for (let i = 0; i < SESSION_REVOKES; i++) {
    const s = await login(auth, main)
    const t0 = Date.now()
    const cli = await runCli(['sessions', 'revoke', String(claimsOf(s.token).sid)], env)
    if (cli.code !== 0) throw new Error(`sessions revoke: ${cli.stdout}${cli.stderr}`)
    cliRuns.push(Date.now() - t0)
    await measure('session', s.token, Date.now())
    revokedTokens.push(s.token)
  }
  // a key: the active one (a replacement is activated in the same transaction). It signed the steady
  // stream's token too: the stream pauses, and goes on with a token of the replacement afterwards
  running = false
  await stream
  const keyToken = (await login(auth, main)).token
  const kid = JSON.parse(Buffer.from(keyToken.split('.')[0]!, 'base64url').toString('utf8')).kid as string
  const t0 = Date.now()
  const rev = await runCli(['keys', 'revoke', kid], env)
  if (rev.code !== 0) throw new Error(`keys revoke: ${rev.stdout}${rev.stderr}`)
  cliRuns.push(Date.now() - t0)
  await measure('key', keyToken, Date.now())
  // auth signs with the replacement once it has read the change (within its key poll): until then
  // its tokens carry the revoked kid and are refused, as they must be
  for (;;) {
    const t = (await login(auth, steadyUser)).token
    if (JSON.parse(Buffer.from(t.split('.')[0]!, 'base64url').toString('utf8')).kid !== kid) { steadyToken = t; break }
    await sleep(50)
  }
  phase = 'after-key'
  running = true
  stream = streamLoop()
  await sleep(2000)

  // a verifier started now refuses every revoked token from its first request
  const g3 = await startGateway({ env, routes, name: 'gateway-3' })
  let lateAccepted = 0
  for (const t of revokedTokens) if (await call(`${g3.base}/api/x`, t) !== 401) lateAccepted++

  running = false
  await stream
  const alive = [auth, g1, g2, g3, services.user, services.product, services.order].filter((p: Proc) => p.alive).length

  const revocations = LOGOUTS + JTI_REVOKES + USER_REVOKES + SESSION_REVOKES + 1
  const p99 = percentile(latencies, 99)
  d.figure('revocations', revocations)
  d.figure('verifiers', verifiers.length)
  d.figure('pairs', latencies.length)
  d.figure('p50_ms', percentile(latencies, 50))
  d.figure('p99_ms', p99)
  d.figure('max_ms', Math.max(...latencies))
  for (const [kind, xs] of Object.entries(byKind)) d.figure(`${kind}_p99_ms`, percentile(xs, 99))
  d.figure('cli_run_ms_max', Math.max(...cliRuns))
  d.figure('unrefused', unrefused)
  d.figure('steady_200', steadyCount.ok)
  d.figure('steady_false401', steadyCount.false401)
  d.figure('steady_5xx', steadyCount.fivexx)
  d.figure('late_verifier_accepted', lateAccepted)
  d.check(unrefused === 0, `${unrefused} (revocation, verifier) pairs not refused within ${GIVE_UP_MS} ms`)
  d.check(latencies.length === revocations * verifiers.length, `${latencies.length} refusals measured, expected ${revocations * verifiers.length}`)
  d.check(p99 <= P99_MAX_MS, `p99 ${p99} ms over ${latencies.length} pairs is above ${P99_MAX_MS} ms`)
  d.check(steadyCount.false401 === 0, `${steadyCount.false401} false 401 on the steady stream (${JSON.stringify(false401By)})`)
  d.check(steadyCount.fivexx === 0, `${steadyCount.fivexx} 5xx or failed requests on the steady stream`)
  d.check(steadyCount.ok > 1000, `the steady stream ran (${steadyCount.ok} answered 200)`)
  d.check(lateAccepted === 0, `a verifier started afterwards accepted ${lateAccepted} revoked tokens`)
  d.check(alive === 7, `${7 - alive} processes died`)
}
