/**
 * Drill 2: issuer outage. Both auth replicas are SIGKILLed while load with still-valid tokens runs
 * through two gateways (rate limits on Redis, the example services behind, which verify every token
 * themselves). The outage lasts 7 s plus the restart: 14 JWKS refresh intervals and more than the
 * JWKS cache TTL, so the gateways verify from stale keys. The rotation worker keeps running, and the
 * kill is timed just after an activation, so the next key is created and activated during the
 * outage: the restarted replicas sign with a key no gateway has seen.
 *
 * Promises: 0 false 401 at the gateways (before, during and after; every token sent had >= 1 s to
 * live), 0 5xx, every gateway /health/ready poll (every 100 ms) answers 200, the replicas come back on
 * the same ports and their new tokens are accepted by both gateways, and the gateways are the same
 * processes throughout (same pids, never exited).
 */
import { setTimeout as sleep } from 'node:timers/promises'
import { Drill } from './lib/summary.js'
import { authPorts, baseEnv, createDatabase, DRILL_REDIS_URL, jwksUrl, metricSum, requireBackends, scrape, serviceRoutes, startAuth, startGateway, startRotation, startServices, stopAll, type Proc } from './lib/processes.js'
import { runLoad, statusLine, type LoadRequest } from './lib/load.js'
import { addUser, TokenPool, type IssuedToken } from './lib/tokens.js'
import { KeyObserver } from './lib/keys.js'

/**
 * Lifecycle rules with T=20 s (tokens issued before the outage outlive it), C=2 s, S=0, P=1 s:
 * pre-publish 3 s >= C+S+P, retire window 25 s >= P+T+S+C = 23 s, a new key every 6 s.
 */
const TIMINGS = {
  ACCESS_TOKEN_TTL: '20s',
  CLOCK_SKEW: '0s',
  VERIFIER_CACHE_MAX: '2s',
  SIGNER_PROPAGATION: '1s',
  KEY_PREPUBLISH: '3s',
  KEY_RETIRE_WINDOW: '25s',
  KEY_ROTATION_PERIOD: '6s',
  ROTATION_SCHEDULE: '* * * * * *',
  AUTH_KEY_POLL_INTERVAL: '250ms',
  JWKS_REFRESH_INTERVAL: '500ms',
  JWKS_CACHE_TTL: '2s'
}
const OUTAGE_MS = 7000
const BEFORE_MS = 3000
const AFTER_MS = 8000
const MIN_TOKEN_LIFE_MS = 1000

/** Polls every gateway's /health/ready every 100 ms until stopped; keeps every non-200. */
function readinessWatch (gateways: Proc[]): { stop: () => Promise<{ polls: number, bad: Array<{ at: number, gw: string, status: number | string }> }> } {
  let stopped = false
  const bad: Array<{ at: number, gw: string, status: number | string }> = []
  let polls = 0
  const loop = (async () => {
    while (!stopped) {
      await Promise.all(gateways.map(async (gw) => {
        polls++
        try {
          const res = await fetch(`${gw.admin}/health/ready`, { signal: AbortSignal.timeout(3000) })
          const body = await res.text()
          if (res.status !== 200) bad.push({ at: Date.now(), gw: gw.name, status: `${res.status} ${body.slice(0, 100)}` })
        } catch (err) {
          bad.push({ at: Date.now(), gw: gw.name, status: (err as Error).message })
        }
      }))
      await sleep(100)
    }
  })()
  return { stop: async () => { stopped = true; await loop; return { polls, bad } } }
}

/** A gateway metric's value (summed over its label sets) from the admin /metrics. */
async function metric (gw: Proc, name: string): Promise<number> {
  return metricSum(await scrape(gw), name)
}

await new Drill('02-issuer-outage').run(async (d) => {
  if (!await requireBackends(d, { postgres: true, redis: true })) return
  const db = await createDatabase()
  d.cleanup(db.drop)
  d.cleanup(() => stopAll())

  const env = baseEnv({ DATABASE_URL: db.url, ...TIMINGS })
  const [a1, a2] = await authPorts(2) as [{ port: number, adminPort: number }, { port: number, adminPort: number }]
  const rotP = startRotation({ env, wait: false })
  const authP = [startAuth({ env, name: 'auth-1', ports: a1, wait: false }), startAuth({ env, name: 'auth-2', ports: a2, wait: false })]
  const svc = await startServices({ env: { ...env, AUTH_JWKS_URL: jwksUrl(a1), LOG_LEVEL: 'warn' }, wait: false })
  const gwEnv = { ...env, REDIS_URL: DRILL_REDIS_URL, LOG_LEVEL: 'warn' }
  const gwP = [
    startGateway({ env: gwEnv, name: 'gateway-1', wait: false, routes: serviceRoutes({ issuer: env.AUTH_ISSUER!, jwksUri: jwksUrl(a1), services: svc }) }),
    startGateway({ env: gwEnv, name: 'gateway-2', wait: false, routes: serviceRoutes({ issuer: env.AUTH_ISSUER!, jwksUri: jwksUrl(a2), services: svc }) })
  ]
  const user = await addUser(env, { permissions: ['order:read', 'order:create'] })
  await (await rotP).ready()
  let auths = await Promise.all(authP.map(async (p) => await (await p).ready()))
  await Promise.all([svc.user.ready(), svc.order.ready(), svc.product.ready()])
  const gateways = await Promise.all(gwP.map(async (p) => await (await p).ready()))
  const gwPids = gateways.map((g) => g.pid)
  d.log(`stack up in ${((Date.now() - d.started) / 1000).toFixed(1)}s`)

  const observer = new KeyObserver({ pool: db.pool, everyMs: 200, retireWindowMs: 25_000 })
  await observer.observe()
  observer.start()
  const before = new TokenPool({ auths: () => auths, user, everyMs: 200, minLifeMs: MIN_TOKEN_LIFE_MS })
  await before.start()
  let after: TokenPool | undefined
  const ready = readinessWatch(gateways)

  // Phases, driven by the drill while the load runs.
  let phase: 'before' | 'outage' | 'after' = 'before'
  const marks: Record<string, number> = {}
  const seenKids = new Set<string>() // kids of tokens the gateways accepted before the outage
  const paths = ['/api/products', '/api/users/me', '/api/orders']
  const next = (w: number, i: number): LoadRequest | undefined => {
    let token: IssuedToken | undefined
    if (phase === 'after' && after !== undefined && (i + w) % 2 === 0) token = after.current()
    token ??= (i + w) % 3 === 0 ? before.oldest() : before.current()
    if (token === undefined) return undefined
    const gw = gateways[(i + (w >> 1)) % 2]!
    const label = `${phase}|${gw.name}|${after?.issued.includes(token) === true ? 'new' : 'old'}`
    if (phase === 'before') seenKids.add(token.kid)
    return { url: `${gw.base}${paths[(i + w) % paths.length]!}`, token, label }
  }
  const driver = (async () => {
    await sleep(BEFORE_MS)
    // Kill just after an activation: the next key is created and activated during the outage.
    const since = Date.now()
    while (observer.activationsBetween(since, Date.now()).length === 0) await sleep(100)
    await sleep(500)
    await before.stop()
    phase = 'outage'
    marks.kill = Date.now()
    for (const a of auths) a.kill('SIGKILL')
    await Promise.all(auths.map(async (a) => await a.exited))
    d.log(`both auth replicas SIGKILLed at +${((marks.kill - d.started) / 1000).toFixed(1)}s`)
    await sleep(OUTAGE_MS)
    marks.restart = Date.now()
    auths = auths.map((a) => a.restart())
    await Promise.all(auths.map(async (a) => await a.ready()))
    marks.authReady = Date.now()
    after = new TokenPool({ auths: () => auths, user, everyMs: 200, minLifeMs: MIN_TOKEN_LIFE_MS })
    await after.start()
    phase = 'after'
    marks.after = Date.now()
    await sleep(AFTER_MS)
  })()
  let driverDone = false
  void driver.finally(() => { driverDone = true })
  const report = await runLoad({ concurrency: 6, durationMs: 70_000, until: () => driverDone, next })
  await driver
  await after?.stop()
  const readiness = await ready.stop()
  await observer.stop()

  // Figures and promises.
  const false401 = report.unauthorized.filter((h) => (h.exp ?? 0) * 1000 > h.at)
  const outageMs = marks.authReady! - marks.kill!
  const okIn = (label: string): number => report.byLabel[label]?.['200'] ?? 0
  const during = gateways.reduce((s, g) => s + okIn(`outage|${g.name}|old`), 0)
  const newKids = new Set(after?.issued.map((t) => t.kid) ?? [])
  const createdDuringOutage = observer.activationsBetween(marks.kill!, marks.authReady!).map((a) => a.kid)
  const unseen = [...newKids].filter((k) => !seenKids.has(k))
  // how long after the replicas were back each gateway first accepted a new token
  const firstOk = (gw: Proc): number | undefined => {
    const at = report.firstOkAt[`after|${gw.name}|new`]
    return at === undefined ? undefined : at - marks.authReady!
  }
  d.figure('outageMs', outageMs)
  d.figure('requests', report.requests)
  d.figure('duringOutage', during)
  d.figure('false401', false401.length)
  d.figure('5xx', report.serverErrors.length)
  d.figure('readyPolls', readiness.polls)
  d.figure('notReady', readiness.bad.length)
  d.figure('activatedDuringOutage', createdDuringOutage.length)
  d.figure('newKidsUnseenBefore', unseen.length)
  d.figure('newTokens', after?.issued.length ?? 0)
  d.figure('firstNewOkMs', gateways.map((g) => firstOk(g) ?? 'never').join('/'))
  d.figure('staleServed', (await Promise.all(gateways.map(async (g) => await metric(g, 'portcullis_jwks_stale_served_total')))).join('/'))
  d.figure('kidMissFound', (await Promise.all(gateways.map(async (g) => metricSum(await scrape(g), 'portcullis_jwks_refresh_total', { result: 'kid_found' })))).join('/'))
  d.figure('jwksFetchFailed', gateways.map((g) => g.logs.filter((l) => l.event === 'jwks_fetch_failed').length).join('/'))
  d.figure('p99ms', report.p99Ms)
  d.figure('maxms', report.maxMs)

  d.check(false401.length === 0, `${false401.length} false 401: ${false401.slice(0, 5).map((h) => `${h.label} +${((h.at - marks.kill!) / 1000).toFixed(1)}s after the kill kid=${h.kid?.slice(0, 8)} from=${h.from} ${h.detail.slice(0, 120)}`).join(' | ')}`)
  d.check(report.serverErrors.length === 0, `${report.serverErrors.length} 5xx: ${report.serverErrors.slice(0, 5).map((h) => `${h.status} ${h.label} +${((h.at - marks.kill!) / 1000).toFixed(1)}s ${h.detail.slice(0, 120)}`).join(' | ')}`)
  d.check(report.networkErrors.length === 0, `${report.networkErrors.length} network errors at the gateways: ${report.networkErrors.slice(0, 3).map((h) => `${h.label} ${h.detail}`).join(' | ')}`)
  d.check(report.otherErrors.length === 0, `${report.otherErrors.length} other non-2xx: ${report.otherErrors.slice(0, 3).map((h) => `${h.status} ${h.label} ${h.detail.slice(0, 100)}`).join(' | ')}`)
  d.check(readiness.bad.length === 0, `gateway /health/ready not 200 ${readiness.bad.length} times: ${readiness.bad.slice(0, 3).map((b) => `${b.gw} +${((b.at - marks.kill!) / 1000).toFixed(1)}s ${b.status}`).join(' | ')}`)
  d.check(during > 100, `only ${during} requests succeeded during the outage`)
  d.check(outageMs > 2 * 500, `the outage lasted ${outageMs} ms`)
  for (const gw of gateways) d.check(firstOk(gw) !== undefined, `${gw.name} accepted no token issued after the restart`)
  d.check((after?.issued.length ?? 0) > 0 && new Set(after?.issued.map((t) => t.from)).size === 2, 'new tokens from both restarted replicas')
  d.check(createdDuringOutage.length > 0, 'no key was activated during the outage (the restarted replicas sign with a key the gateways knew)')
  d.check(before.failures.length + (after?.failures.length ?? 0) === 0, `token requests failed: ${[...before.failures, ...(after?.failures ?? [])].slice(0, 3).map((f) => f.detail).join(' | ')}`)
  d.check(gateways.every((g, i) => g.alive && g.pid === gwPids[i]), `a gateway was restarted or exited: ${gateways.map((g) => `${g.name} pid ${g.pid} alive=${g.alive}`).join(', ')}`)
  d.check(observer.violations.length === 0, `key observations broken: ${observer.violations.slice(0, 3).map((v) => v.what).join(' | ')}`)
  d.log(`load ${statusLine(report)}; byLabel ${JSON.stringify(report.byLabel)}`)
})
