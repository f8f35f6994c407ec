/**
 * Drill 04: the database down, then frozen. Auth answers 503 with Retry-After from the first
 * request, gateways keep verifying, everything recovers without restarts.
 *
 * A private PostgreSQL (test/helpers/private-postgres.ts: never the shared server), one auth
 * process on it (AUTH_DATABASE_TIMEOUT at its 2 s default), one gateway in front of a toy upstream,
 * verifying the auth service's tokens. Steady bounded load through every phase: valid tokens
 * through the gateway, logins and client-credentials requests to auth.
 *   healthy  -> everything 200;
 *   stopped  -> fast shutdown (connections refused): every auth request 503 + Retry-After;
 *   restarted-> auth answers 200 again within RECOVERY_MAX_MS of the database accepting connections;
 *   frozen   -> SIGSTOP (connections accepted, never answered): every auth request 503 + Retry-After,
 *               none slower than FROZEN_MAX_MS;
 *   thawed   -> SIGCONT: 200 again within RECOVERY_MAX_MS.
 * Throughout: no auth answer is a 500 (or no answer), every gateway request with a valid token is a
 * 200 (it verifies with the JWKS it holds; auth keeps serving the JWKS it read last), and neither
 * process is restarted.
 */
import { performance } from 'node:perf_hooks'
import { runCli } from '../test/helpers/rotation-workers.js'
import { privatePostgresSkip, startPrivatePostgres } from '../test/helpers/private-postgres.js'
import { Drill } from './lib/summary.js'
import { closedLoop, sleep, type Sample } from './lib/closed-loop.js'
import { baseEnv, jwksUrl, startAuth, startGateway, stopAll } from './lib/processes.js'
import { addUser, login } from './lib/tokens.js'
import { startToyUpstream } from './lib/toy-upstream.js'

/** The auth service's statement budget (AUTH_DATABASE_TIMEOUT's default) plus slack for a loaded 2-core machine. */
const FROZEN_MAX_MS = 2500
/** Database back -> auth answers 200 again: the signer's 1 s poll, a statement budget, slack. */
const RECOVERY_MAX_MS = 8000
/** Each outage outlasts SIGNER_PROPAGATION (5 s): the signer's staleness and the store errors both answer 503. */
const OUTAGE_MS = 8000
/** Auth load: workers, pause between two requests of one worker. */
const AUTH_WORKERS = 3
const AUTH_PAUSE_MS = 40
/** Per-request deadline: past it a request counts as no answer (status 0). */
const REQUEST_TIMEOUT_MS = 10_000

interface AuthSample { kind: 'login' | 'client_credentials', at: number, end: number, ms: number, status: number, retryAfter?: string, error?: string }

await new Drill('04-database-outage').run(async (d) => {
  const skip = privatePostgresSkip()
  if (skip !== false) {
    d.check(false, `cannot start a private PostgreSQL: ${skip}`)
    return
  }
  const pgs = await startPrivatePostgres()
  d.cleanup(() => pgs.cleanup())
  d.cleanup(() => stopAll())
  const up = await startToyUpstream('echo')
  d.cleanup(() => up.close())

  const env = baseEnv({ DATABASE_URL: pgs.url })
  const rotated = await runCli(['keys', 'rotate', '--activate-now'], env)
  if (rotated.code !== 0) throw new Error(`portcullis keys rotate failed (${rotated.code}): ${rotated.stdout}${rotated.stderr}`)
  const user = await addUser(env)
  const added = await runCli(['clients', 'add', 'drill-billing', '--scope', 'invoices:read'], env)
  const clientSecret = /client_secret=(\S+)/.exec(added.stdout)?.[1]
  if (added.code !== 0 || clientSecret === undefined) throw new Error(`portcullis clients add failed (${added.code}): ${added.stdout}${added.stderr}`)

  const auth = await startAuth({ env })
  const gw = await startGateway({
    env,
    routes: {
      issuers: [{ issuer: env.AUTH_ISSUER!, audience: env.AUTH_AUDIENCE!, jwksUri: jwksUrl(auth) }],
      rateLimit: { max: 10_000_000, timeWindow: '1m' },
      routes: [{ name: 'echo', prefix: '/api', upstream: up.url }]
    }
  })
  const token = await login(auth, user)
  d.log(`postgres ${pgs.url} (pid ${pgs.pid}); auth ${auth.base} (pid ${auth.pid}); gateway ${gw.base} (pid ${gw.pid})`)

  // Logins and client-credentials requests to auth, each one recorded.
  const authSamples: AuthSample[] = []
  let authStopped = false
  const authRequest = async (kind: AuthSample['kind']): Promise<AuthSample> => {
    const at = Date.now()
    const started = performance.now()
    const init: RequestInit = kind === 'login'
      ? { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ username: user.username, password: user.password }) }
      : { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams({ grant_type: 'client_credentials', client_id: 'drill-billing', client_secret: clientSecret }).toString() }
    try {
      const res = await fetch(`${auth.base}${kind === 'login' ? '/auth/login' : '/oauth/token'}`, { ...init, signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) })
      const body = await res.json() as { error?: string }
      const ms = performance.now() - started
      return { kind, at, end: at + ms, ms, status: res.status, ...(res.headers.get('retry-after') !== null ? { retryAfter: res.headers.get('retry-after')! } : {}), ...(body.error !== undefined ? { error: body.error } : {}) }
    } catch (err) {
      const ms = performance.now() - started
      return { kind, at, end: at + ms, ms, status: 0, error: (err as Error).name }
    }
  }
  const authLoad = Promise.all(Array.from({ length: AUTH_WORKERS }, async (_, w) => {
    for (let i = 0; !authStopped && i < 5000; i++) {
      authSamples.push(await authRequest((i + w) % 2 === 0 ? 'login' : 'client_credentials'))
      await sleep(AUTH_PAUSE_MS)
    }
  }))
  // Valid tokens through the gateway.
  const gwLoad = closedLoop({ targets: [{ origin: gw.base, path: '/api/x', headers: { authorization: `Bearer ${token.token}` } }], concurrency: 2, durationMs: 90_000, maxRequests: 20_000, pauseMs: 20 })

  /** Logs in every 100 ms until a 200: ms from `since`, or NaN past twice the bound. */
  const timeToLogin = async (since: number): Promise<number> => {
    while (Date.now() - since < 2 * RECOVERY_MAX_MS) {
      if ((await authRequest('login')).status === 200) return Date.now() - since
      await sleep(100)
    }
    return Number.NaN
  }

  let stoppedAt = 0
  let restartAt = 0
  let backAt = 0
  let frozenAt = 0
  let thawAt = 0
  let restartRecoveryMs = Number.NaN
  let thawRecoveryMs = Number.NaN
  try {
    d.log('phase healthy')
    await sleep(4000)

    d.log('phase stopped')
    await pgs.stop()
    stoppedAt = Date.now()
    await sleep(OUTAGE_MS)

    d.log('phase restarted')
    restartAt = Date.now()
    await pgs.restart()
    backAt = Date.now()
    restartRecoveryMs = await timeToLogin(backAt)
    d.log(`auth answered 200 ${restartRecoveryMs} ms after the database accepted connections again`)
    await sleep(3000)

    d.log('phase frozen')
    frozenAt = Date.now()
    pgs.freeze()
    await sleep(OUTAGE_MS)

    d.log('phase thawed')
    thawAt = Date.now()
    pgs.thaw()
    thawRecoveryMs = await timeToLogin(thawAt)
    d.log(`auth answered 200 ${thawRecoveryMs} ms after SIGCONT`)
    await sleep(3000)
  } finally {
    pgs.thaw()
    authStopped = true
    gwLoad.stop()
    await Promise.all([authLoad, gwLoad.done])
  }

  const healthy = authSamples.filter((s) => s.end < stoppedAt - 1000)
  // Sent once the server was gone, answered before it was started again.
  const stopped = authSamples.filter((s) => s.at >= stoppedAt && s.end <= restartAt)
  // Sent once the server was frozen, answered before SIGCONT.
  const frozen = authSamples.filter((s) => s.at >= frozenAt && s.end <= thawAt)
  // Every request the freeze could hold: answered after it began, sent before it ended.
  const heldByFreeze = authSamples.filter((s) => s.end >= frozenAt && s.at < thawAt)
  const refusedWrongly = (list: AuthSample[]): AuthSample[] => list.filter((s) => s.status !== 503 || s.retryAfter === undefined || s.error !== 'temporarily_unavailable')
  const describe = (list: AuthSample[]): string => list.slice(0, 5).map((s) => `${s.kind} ${s.status} ${s.error ?? ''} after ${s.ms.toFixed(0)} ms`).join(', ')
  const serverErrors = authSamples.filter((s) => s.status === 0 || (s.status >= 500 && s.status !== 503))
  const freezeMaxMs = Math.max(0, ...heldByFreeze.map((s) => s.ms))
  const stopMaxMs = Math.max(0, ...stopped.map((s) => s.ms))
  const gwSamples: Sample[] = gwLoad.samples
  const gwNon200 = gwSamples.filter((s) => s.status !== 200)
  const auth503 = authSamples.filter((s) => s.status === 503).length
  const firstAfterStop = stopped.slice().sort((a, b) => a.at - b.at)[0]

  d.figure('auth_requests', authSamples.length)
  d.figure('auth_503', auth503)
  d.figure('auth_500', serverErrors.length)
  d.figure('stopped_requests', stopped.length)
  d.figure('first_after_stop', firstAfterStop?.status ?? 'none')
  d.figure('stopped_max_ms', stopMaxMs.toFixed(0))
  d.figure('frozen_requests', frozen.length)
  d.figure('frozen_max_ms', freezeMaxMs.toFixed(0))
  d.figure('recovery_restart_ms', restartRecoveryMs)
  d.figure('recovery_thaw_ms', thawRecoveryMs)
  d.figure('gateway_requests', gwSamples.length)
  d.figure('gateway_non200', gwNon200.length)

  d.check(healthy.length > 0 && healthy.every((s) => s.status === 200), `healthy: every auth request 200 (${describe(healthy.filter((s) => s.status !== 200))})`)
  d.check(stopped.length >= 20, `stopped: the load reached auth during the outage (${stopped.length} requests)`)
  d.check(refusedWrongly(stopped).length === 0, `stopped: every auth request 503 temporarily_unavailable with Retry-After (${describe(refusedWrongly(stopped))})`)
  d.check(frozen.length >= 10, `frozen: the load reached auth during the freeze (${frozen.length} requests)`)
  d.check(refusedWrongly(frozen).length === 0, `frozen: every auth request 503 temporarily_unavailable with Retry-After (${describe(refusedWrongly(frozen))})`)
  d.check(freezeMaxMs <= FROZEN_MAX_MS, `frozen: the slowest auth request took ${freezeMaxMs.toFixed(0)} ms (at most ${FROZEN_MAX_MS})`)
  d.check(serverErrors.length === 0, `no auth request answered 500 or not at all (${describe(serverErrors)})`)
  d.check(Number.isFinite(restartRecoveryMs) && restartRecoveryMs <= RECOVERY_MAX_MS, `restarted: auth answered 200 after ${restartRecoveryMs} ms (at most ${RECOVERY_MAX_MS})`)
  d.check(Number.isFinite(thawRecoveryMs) && thawRecoveryMs <= RECOVERY_MAX_MS, `thawed: auth answered 200 after ${thawRecoveryMs} ms (at most ${RECOVERY_MAX_MS})`)
  d.check(gwSamples.length >= 100 && gwNon200.length === 0,
    `gateway: every request with a valid token 200 (${gwSamples.length} requests; ${gwNon200.slice(0, 5).map((s) => `${s.status} ${s.code ?? ''}`).join(', ')})`)
  d.check(auth.alive && gw.alive, `no restart: auth ${auth.alive ? 'ran throughout' : `exited ${JSON.stringify(auth.exit)}`}, gateway ${gw.alive ? 'ran throughout' : `exited ${JSON.stringify(gw.exit)}`}`)
})
