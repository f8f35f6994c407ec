/**
 * Drill 07: emergency revoke under a random-kid flood. Replacement-key tokens are accepted at both
 * gateways within 5 s of the replacement signing; revoked-key tokens are refused within the JWKS
 * refresh interval.
 *
 * The real auth service on a SQLite store in a temp folder, with one active key and no pending one
 * (`portcullis keys rotate` on the empty store); two gateways reading its JWKS (JWKS_REFRESH_INTERVAL
 * REFRESH_S, the kid-miss cooldown at its default); a random-kid flood on both gateways from the same
 * IP as the real client (so that IP is over its failure budget too). Then `portcullis keys revoke`
 * of the active key: it activates a new key in the same transaction. Every POLL_MS the drill logs in
 * (to see when auth signs with the replacement), reads auth's JWKS, and sends a token of the revoked
 * key and (once there is one) a token of the replacement to each gateway.
 *
 * Promises: the replacement's tokens answered 200 at each gateway within ACCEPT_MAX_MS of auth's
 * first token signed with it, and from then on; the revoked key's tokens refused at each gateway
 * within REFRESH_S + the auth poll + a margin of the revoke, and from then on; the flood only ever
 * 401/429; 0 5xx; every process alive.
 */
import { Drill } from './lib/summary.js'
import { sleep } from './lib/closed-loop.js'
import { startToyUpstream } from './lib/toy-upstream.js'
import { authPorts, baseEnv, jwksUrl, startAuth, startGateway, stopAll, type Proc } from './lib/processes.js'
import { addUser, describeToken, jwksKids, login, type IssuedToken } from './lib/tokens.js'
import { flood, randomKidTokens } from './lib/hostile.js'
import { metricValue } from './lib/scrape.js'
import { runCli } from '../test/helpers/rotation-workers.js'

/** Long enough that a gateway waiting for its background refresh would break the 5 s promise. */
const REFRESH_S = 15
/** AUTH_KEY_POLL_INTERVAL, its default: auth serves the changed JWKS and signs with the new key within it. */
const AUTH_POLL_S = 1
const ACCEPT_MAX_MS = 5000
const REFUSE_MARGIN_MS = 1000
const POLL_MS = 100
/** Past this after the revoke, the drill stops waiting. */
const GIVE_UP_MS = 20_000

interface GatewayWatch { gw: Proc, acceptedAt?: number, refusedAt?: number, newAnswers: Array<{ at: number, status: number }>, oldAnswers: Array<{ at: number, status: number }> }

await new Drill('07-emergency-revoke').run(async (d) => {
  d.cleanup(() => stopAll())
  const up = await startToyUpstream('api')
  d.cleanup(() => up.close())
  const env = baseEnv({ JWKS_REFRESH_INTERVAL: `${REFRESH_S}s`, AUTH_KEY_POLL_INTERVAL: `${AUTH_POLL_S}s`, LOG_LEVEL: 'warn' })

  // one active key, no pending one
  const rotate = await runCli(['keys', 'rotate'], env)
  const oldKid = /key (\S+) is active/.exec(rotate.stdout)?.[1]
  if (rotate.code !== 0 || oldKid === undefined) throw new Error(`portcullis keys rotate failed (${rotate.code}): ${rotate.stdout}${rotate.stderr}`)
  const user = await addUser(env)

  const [ap] = await authPorts(1) as [{ port: number, adminPort: number }]
  const routes = {
    issuers: [{ issuer: env.AUTH_ISSUER!, audience: 'portcullis', jwksUri: jwksUrl(ap) }],
    // the top-level budget is also the per-IP failure budget (100 a minute): the flood is soon over it
    rateLimit: { max: 100, timeWindow: '1m' },
    routes: [{ name: 'api', prefix: '/api', upstream: up.url, rateLimit: { max: 1_000_000, timeWindow: '1m' } }]
  }
  const auth = await startAuth({ env, ports: ap })
  const [g1, g2] = await Promise.all([startGateway({ env, routes, name: 'gateway-1' }), startGateway({ env, routes, name: 'gateway-2' })]) as [Proc, Proc]
  d.log(`auth ${auth.base}, gateways ${g1.base} ${g2.base}, key ${oldKid}`)

  const oldToken = (await login(auth, user)).token
  const call = async (gw: Proc, token: string): Promise<number> => {
    try {
      const r = await fetch(`${gw.base}/api/x`, { headers: { authorization: `Bearer ${token}` }, signal: AbortSignal.timeout(5000) })
      await r.arrayBuffer()
      return r.status
    } catch {
      return 0
    }
  }
  for (const g of [g1, g2]) {
    const s = await call(g, oldToken)
    if (s !== 200) throw new Error(`${g.name}: the active key's token answered ${s} before the revoke`)
  }

  // the flood: both gateways, for the whole drill
  const claims = { iss: env.AUTH_ISSUER!, aud: 'portcullis', sub: 'attacker', exp: Math.floor(Date.now() / 1000) + 600 }
  const floods = [g1, g2].map((g) => flood({ origin: g.base, path: '/api/x', token: randomKidTokens(claims), concurrency: 2, durationMs: GIVE_UP_MS + 15_000, pauseMs: 3 }))
  const watches: GatewayWatch[] = [g1, g2].map((gw) => ({ gw, newAnswers: [], oldAnswers: [] }))
  let revokeStart = 0
  let revokeEnd = 0
  let newKid: string | undefined
  let newToken: IssuedToken | undefined
  let signedAt: number | undefined
  let jwksChangedAt: number | undefined
  const loginFailures: string[] = []
  try {
    await sleep(2500) // kid-miss fetches under way, the IP over its failure budget
    const fetchesBefore = await Promise.all([g1, g2].map((g) => metricValue(g.admin, 'portcullis_jwks_refresh_total')))

    revokeStart = Date.now()
    const revoke = await runCli(['keys', 'revoke', oldKid], env)
    revokeEnd = Date.now()
    newKid = /key (\S+) is now the active key/.exec(revoke.stdout)?.[1]
    if (revoke.code !== 0 || newKid === undefined) throw new Error(`portcullis keys revoke failed (${revoke.code}): ${revoke.stdout}${revoke.stderr}`)
    d.log(`revoked ${oldKid} in ${revokeEnd - revokeStart} ms; replacement ${newKid}`)

    // watch until both gateways accept the new key and refuse the old one, plus a second of both
    const done = (): boolean => watches.every((w) => w.acceptedAt !== undefined && w.refusedAt !== undefined &&
      Date.now() - Math.max(w.acceptedAt, w.refusedAt) > 1000)
    while (!done() && Date.now() - revokeEnd < GIVE_UP_MS) {
      const tick = Date.now()
      const jobs: Array<Promise<unknown>> = []
      if (jwksChangedAt === undefined) {
        jobs.push(jwksKids(auth).then((kids) => { if (!kids.includes(oldKid)) jwksChangedAt ??= Date.now() }, () => {}))
      }
      if (newToken === undefined) {
        jobs.push(login(auth, user).then((t) => {
          if (t.kid === newKid) { newToken = describeToken(t.token, auth.name); signedAt ??= Date.now() }
        }, (err: Error) => { loginFailures.push(err.message) }))
      }
      for (const w of watches) {
        jobs.push(call(w.gw, oldToken).then((status) => {
          const at = Date.now()
          w.oldAnswers.push({ at, status })
          if (status !== 200) w.refusedAt ??= at
        }))
        const tok = newToken
        if (tok !== undefined) {
          jobs.push(call(w.gw, tok.token).then((status) => {
            const at = Date.now()
            w.newAnswers.push({ at, status })
            if (status === 200) w.acceptedAt ??= at
          }))
        }
      }
      await Promise.all(jobs)
      await sleep(Math.max(0, POLL_MS - (Date.now() - tick)))
    }
    const fetchesAfter = await Promise.all([g1, g2].map((g) => metricValue(g.admin, 'portcullis_jwks_refresh_total')))
    d.figure('jwks_fetches_g1_g2', fetchesAfter.map((v, i) => v - fetchesBefore[i]!).join('/'))
  } finally {
    for (const f of floods) f.stop()
  }
  const floodResults = await Promise.all(floods.map((f) => f.done))

  d.figure('revoke_cmd_ms', revokeEnd - revokeStart)
  d.figure('signs_after_ms', signedAt === undefined ? 'never' : signedAt - revokeEnd)
  d.figure('jwks_changed_after_ms', jwksChangedAt === undefined ? 'never' : jwksChangedAt - revokeEnd)
  d.check(signedAt !== undefined, `auth never signed with the replacement key ${newKid} within ${GIVE_UP_MS} ms (login failures: ${loginFailures.slice(0, 3).join('; ')})`)
  d.check(jwksChangedAt !== undefined, `auth's JWKS still listed the revoked key ${oldKid} ${GIVE_UP_MS} ms after the revoke`)

  const refuseMax = REFRESH_S * 1000 + AUTH_POLL_S * 1000 + REFUSE_MARGIN_MS
  for (const [i, w] of watches.entries()) {
    const n = i + 1
    const accept = w.acceptedAt === undefined || signedAt === undefined ? Number.NaN : w.acceptedAt - signedAt
    const refuse = w.refusedAt === undefined ? Number.NaN : w.refusedAt - revokeEnd
    d.figure(`g${n}_accept_ms`, Number.isFinite(accept) ? accept : 'never')
    d.figure(`g${n}_refuse_ms`, Number.isFinite(refuse) ? refuse : 'never')
    d.check(Number.isFinite(accept) && accept <= ACCEPT_MAX_MS,
      `${w.gw.name}: the replacement key's token was accepted ${Number.isFinite(accept) ? `${accept} ms` : 'never'} after auth first signed with it (at most ${ACCEPT_MAX_MS} ms); answers: ${statusRuns(w.newAnswers, signedAt ?? 0)}`)
    d.check(Number.isFinite(refuse) && refuse <= refuseMax,
      `${w.gw.name}: the revoked key's token was refused ${Number.isFinite(refuse) ? `${refuse} ms` : 'never'} after the revoke (at most ${refuseMax} ms: refresh ${REFRESH_S} s + auth poll ${AUTH_POLL_S} s + ${REFUSE_MARGIN_MS} ms); answers: ${statusRuns(w.oldAnswers, revokeEnd)}`)
    // and it stays so: no 200 for the revoked key after its first refusal, nothing but 200 for the replacement after its first 200
    const oldAfter = w.oldAnswers.filter((a) => w.refusedAt !== undefined && a.at > w.refusedAt && a.status === 200)
    const newAfter = w.newAnswers.filter((a) => w.acceptedAt !== undefined && a.at > w.acceptedAt && a.status !== 200)
    d.check(oldAfter.length === 0, `${w.gw.name}: the revoked key's token was accepted again ${oldAfter.length} times after being refused`)
    d.check(newAfter.length === 0, `${w.gw.name}: the replacement's token was refused again after being accepted: ${statusRuns(newAfter, w.acceptedAt ?? 0)}`)
    const fiveXx = [...w.oldAnswers, ...w.newAnswers].filter((a) => a.status >= 500 || a.status === 0)
    d.check(fiveXx.length === 0, `${w.gw.name}: ${fiveXx.length} probe answers were 5xx or no answer`)
    // refused as an unknown kid: 401, or 429 since the flood put the IP over its failure budget
    const oddRefusals = w.oldAnswers.filter((a) => a.status !== 200 && a.status !== 401 && a.status !== 429)
    d.check(oddRefusals.length === 0, `${w.gw.name}: the revoked key's token got ${statusRuns(oddRefusals, revokeEnd)}`)
  }

  const flooded = floodResults.reduce((n, r) => n + r.requests, 0)
  const floodStatus: Record<string, number> = {}
  for (const r of floodResults) for (const [k, v] of Object.entries(r.byStatus)) floodStatus[k] = (floodStatus[k] ?? 0) + v
  d.figure('flood', flooded)
  d.figure('flood_429', floodStatus['429'] ?? 0)
  const floodOdd = Object.entries(floodStatus).filter(([k]) => k !== '401' && k !== '429')
  d.check(floodOdd.length === 0, `the random-kid flood got ${JSON.stringify(Object.fromEntries(floodOdd))}`)
  for (const p of [auth, g1, g2]) d.check(p.alive, `${p.name} exited: ${JSON.stringify(p.exit)}`)
})

/** `+120ms:401 x5, +620ms:200 x3` : runs of one status, times from `t0`. */
function statusRuns (answers: Array<{ at: number, status: number }>, t0: number): string {
  const runs: string[] = []
  let prev: number | undefined
  let count = 0
  let from = 0
  for (const a of answers) {
    if (a.status === prev) { count++; continue }
    if (prev !== undefined) runs.push(`+${from - t0}ms:${prev} x${count}`)
    prev = a.status
    count = 1
    from = a.at
  }
  if (prev !== undefined) runs.push(`+${from - t0}ms:${prev} x${count}`)
  return runs.join(', ') || 'none'
}
