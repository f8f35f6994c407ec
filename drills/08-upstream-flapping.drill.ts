/**
 * Drill 08: upstream flapping. The breaker opens (fast 503), closes again, other routes are
 * unaffected, log volume stays bounded.
 *
 * One gateway process, two routes to two upstreams (each upstream origin has its own breaker):
 * /flappy to an upstream the drill stops and starts again on the same port CYCLES times, /steady to
 * one that stays up. Closed-loop load on both routes throughout. Promises, per outage:
 *   - the breaker opens: answers 503 PORTCULLIS_CIRCUIT_OPEN with Retry-After, after at most
 *     threshold + in-flight connection failures (502 PORTCULLIS_UPSTREAM_UNAVAILABLE), plus one per
 *     half-open probe;
 *   - those 503s are fast (no upstream wait: as fast as the healthy route's answers);
 *   - once the upstream is back the route answers 200 again within the reset timeout (+ slack), and
 *     only 200 after that;
 * and over the whole drill: /steady answers only 200; the gateway writes one access line per
 * request and, beside them, at most one `request refused` line per code per second, no error line,
 * no stack; the gateway never exits.
 */
import { Drill } from './lib/summary.js'
import { closedLoop, ms1, percentile, sleep, summarize, type Sample } from './lib/closed-loop.js'
import { startToyUpstream } from './lib/toy-upstream.js'
import { startGateway, stopAll, type LogRecord } from './lib/processes.js'
import { metricValue } from './lib/scrape.js'

const THRESHOLD = 5
const RESET_S = 2
const CYCLES = 3
const DOWN_MS = 5000
const UP_MS = 4000
/** Workers per route. */
const CONCURRENCY = 4
/** The route answers 200 again within one reset timeout of the upstream's return, plus this. */
const RECOVERY_SLACK_MS = 1500
/** A circuit-open answer may be this much slower than the healthy route's p99 in the same seconds and still be "fast". */
const FAST_SLACK_MS = 20

await new Drill('08-upstream-flapping').run(async (d) => {
  const flappy = await startToyUpstream('flappy')
  d.cleanup(() => flappy.close())
  const steady = await startToyUpstream('steady')
  d.cleanup(() => steady.close())
  d.cleanup(() => stopAll())

  const gw = await startGateway({
    name: 'gateway',
    env: { LOG_LEVEL: 'info', GATEWAY_SHUTDOWN_GRACE: '3s' },
    routes: {
      rateLimit: false,
      breaker: { failureThreshold: THRESHOLD, resetTimeout: `${RESET_S}s` },
      timeouts: { connect: '1s', headers: '2s', body: '2s' },
      routes: [
        { name: 'flappy', prefix: '/flappy', upstream: flappy.url, auth: false },
        { name: 'steady', prefix: '/steady', upstream: steady.url, auth: false }
      ]
    }
  })
  d.log(`gateway ${gw.base}; flappy ${flappy.url}, steady ${steady.url}`)

  const load = closedLoop({
    targets: [{ origin: gw.base, path: '/flappy/x' }, { origin: gw.base, path: '/steady/x' }],
    concurrency: CONCURRENCY,
    durationMs: 60_000,
    pauseMs: 10 // at most ~800 requests/s in all: the gateway's every log line is kept and judged
  })
  // the breaker gauge, sampled
  const gauge: Array<{ at: number, v: number }> = []
  let sampling = true
  const sampler = (async () => {
    while (sampling) {
      const v = await metricValue(gw.admin, 'portcullis_circuit_breaker_state', `upstream="${flappy.url}"`).catch(() => -1)
      gauge.push({ at: Date.now(), v })
      await sleep(250)
    }
  })()

  const outages: Array<{ down: number, up: number }> = []
  const started = Date.now()
  let ended = 0
  try {
    await sleep(2000)
    for (let c = 0; c < CYCLES; c++) {
      const down = Date.now()
      await flappy.stop()
      await sleep(DOWN_MS)
      await flappy.start()
      outages.push({ down, up: Date.now() })
      await sleep(UP_MS + (c === CYCLES - 1 ? 1000 : 0))
    }
  } finally {
    ended = Date.now()
    load.stop()
    sampling = false
    await Promise.all([load.done, sampler])
  }
  // the gateway writes its log in batches (every 200 ms at most): wait until its lines stop coming,
  // so the last requests' access lines are read before they are counted (up to 3 s on a busy machine)
  for (let n = -1, waited = 0; n !== gw.logs.length + gw.dropped && waited < 3000; waited += 400) {
    n = gw.logs.length + gw.dropped
    await sleep(400)
  }

  const fl = load.samples.filter((s) => s.target === 0)
  const st = load.samples.filter((s) => s.target === 1)
  const open = (s: Sample): boolean => s.status === 503 && s.code === 'PORTCULLIS_CIRCUIT_OPEN'
  const unavailable = (s: Sample): boolean => s.status === 502 && s.code === 'PORTCULLIS_UPSTREAM_UNAVAILABLE'
  d.figure('requests', load.samples.length)
  d.figure('flappy_200', fl.filter((s) => s.status === 200).length)
  d.figure('flappy_502', fl.filter(unavailable).length)
  d.figure('flappy_503', fl.filter(open).length)

  // --- every outage ---
  const recoveries: number[] = []
  const failuresPerOutage: number[] = []
  for (const [i, o] of outages.entries()) {
    const next = outages[i + 1]?.down ?? ended
    const during = fl.filter((s) => s.at >= o.down && s.at < o.up)
    const firstOpen = during.find(open)
    const failures = during.filter((s) => s.status !== 200 && !open(s))
    failuresPerOutage.push(failures.length)
    const probes = Math.floor(DOWN_MS / 1000 / RESET_S) + 1
    const allowed = THRESHOLD + CONCURRENCY + probes
    const strange = during.filter((s) => s.status !== 200 && !open(s) && !unavailable(s))
    d.check(firstOpen !== undefined, `outage ${i + 1}: the breaker never answered 503 PORTCULLIS_CIRCUIT_OPEN (${summarize(during)})`)
    d.check(failures.length <= allowed, `outage ${i + 1}: ${failures.length} requests reached the dead upstream (${summarize(failures)}); at most ${allowed} = threshold ${THRESHOLD} + ${CONCURRENCY} in flight + ${probes} probes`)
    d.check(strange.length === 0, `outage ${i + 1}: answers other than 502 PORTCULLIS_UPSTREAM_UNAVAILABLE and 503 PORTCULLIS_CIRCUIT_OPEN: ${summarize(strange)}`)
    d.check(during.filter(open).every((s) => s.retryAfter !== undefined && Number(s.retryAfter) >= 1 && Number(s.retryAfter) <= RESET_S),
      `outage ${i + 1}: a circuit-open answer without a Retry-After of 1-${RESET_S} s`)
    // back up: the first 200, then nothing but 200 from half a second later until the next outage
    const after = fl.filter((s) => s.at >= o.up && s.at < next - 200) // a request sent just before the next stop meets it
    const first200 = after.find((s) => s.status === 200)
    const recovery = first200 === undefined ? Number.NaN : first200.at + first200.ms - o.up
    recoveries.push(recovery)
    d.check(Number.isFinite(recovery) && recovery <= RESET_S * 1000 + RECOVERY_SLACK_MS,
      `outage ${i + 1}: the route answered 200 again ${Number.isFinite(recovery) ? `${Math.round(recovery)} ms` : 'never'} after the upstream came back (at most ${RESET_S * 1000 + RECOVERY_SLACK_MS})`)
    if (first200 !== undefined) {
      const settled = after.filter((s) => s.at >= first200.at + first200.ms + 500)
      const bad = settled.filter((s) => s.status !== 200)
      d.check(settled.length > 0 && bad.length === 0, `outage ${i + 1}: after recovering the route still answered ${summarize(bad)} (of ${settled.length})`)
    }
  }
  d.figure('recovery_ms', recoveries.map((v) => Number.isFinite(v) ? Math.round(v) : 'never').join('/'))
  d.figure('upstream_hits_per_outage', failuresPerOutage.join('/'))

  // --- fast 503: against the healthy route's latency over the same outages ---
  const inOutage = (s: Sample): boolean => outages.some((o) => s.at >= o.down && s.at < o.up)
  const openLat = fl.filter(open).map((s) => s.ms)
  const steadyOutLat = st.filter(inOutage).map((s) => s.ms)
  const openP99 = percentile(openLat, 99)
  const steadyP99 = percentile(steadyOutLat, 99)
  d.figure('open_p50_ms', ms1(percentile(openLat, 50)))
  d.figure('open_p99_ms', ms1(openP99))
  d.figure('steady_p99_ms', ms1(steadyP99))
  d.check(openLat.length > 0 && openP99 <= steadyP99 + FAST_SLACK_MS,
    `circuit-open answers are not fast: p99 ${ms1(openP99)} ms against the healthy route's ${ms1(steadyP99)} ms in the same seconds (+${FAST_SLACK_MS} ms allowed)`)

  // --- the other route ---
  const steadyBad = st.filter((s) => s.status !== 200)
  d.figure('steady_requests', st.length)
  d.figure('steady_errors', steadyBad.length)
  d.check(st.length > 0 && steadyBad.length === 0, `the healthy route answered ${steadyBad.length} errors: ${summarize(steadyBad)}`)

  // --- the breaker gauge ---
  const gaugeOpen = outages.map((o) => gauge.some((g) => g.at >= o.down && g.at < o.up && g.v === 1))
  d.check(gaugeOpen.every(Boolean), `portcullis_circuit_breaker_state was never 1 during outage(s) ${gaugeOpen.map((v, i) => (v ? '' : i + 1)).filter(Boolean).join(',')}`)
  d.check(gauge.at(-1)?.v === 0, `portcullis_circuit_breaker_state is ${gauge.at(-1)?.v} at the end, not 0 (closed)`)

  // --- log volume, from the gateway's JSON lines (their own `time`) ---
  const lines = gw.logs.filter((l) => typeof l.time === 'number' && l.time >= started && l.time < ended)
  const access = lines.filter((l) => l.msg === 'request completed')
  // @fastify/reply-from's own line for each failed upstream request, judged on its own below
  const replyFrom = lines.filter((l) => l.msg === 'response errored')
  const others = lines.filter((l) => l.msg !== 'request completed' && l.msg !== 'response errored')
  const refused = others.filter((l) => l.msg === 'request refused')
  const failedLines = others.filter((l) => l.msg === 'request failed' || (l.level ?? 0) >= 50)
  const withStack = lines.filter((l) => JSON.stringify(l).includes('"stack"'))
  const perSecond = new Map<number, number>()
  for (const l of others) perSecond.set(Math.floor(l.time! / 1000), (perSecond.get(Math.floor(l.time! / 1000)) ?? 0) + 1)
  const maxPerSecond = Math.max(0, ...perSecond.values())
  // one refusal line per code and second: two lines of one code at least ~1 s apart
  const tooClose: string[] = []
  const lastByCode = new Map<string, number>()
  for (const l of refused) {
    const code = String(l.code)
    const prev = lastByCode.get(code)
    if (prev !== undefined && l.time! - prev < 990) tooClose.push(`${code} ${l.time! - prev} ms apart`)
    lastByCode.set(code, l.time!)
  }
  const suppressed = refused.reduce((n, l) => n + (typeof l.suppressed === 'number' ? l.suppressed : 0), 0)
  const outageSeconds = outages.reduce((n, o) => n + (o.up - o.down), 0) / 1000
  d.figure('access_lines', access.length)
  d.figure('refusal_lines', refused.length)
  d.figure('refusals_suppressed', suppressed)
  d.figure('other_lines_max_per_s', maxPerSecond)
  d.figure('other_lines_per_outage_s', (others.length / outageSeconds).toFixed(1))
  d.check(tooClose.length === 0, `more than one "request refused" line per code and second: ${tooClose.slice(0, 5).join(', ')}`)
  // per second at most: a refusal line for each of the two codes and the breaker's state changes (open, half-open, closed)
  d.check(maxPerSecond <= 5, `${maxPerSecond} log lines besides the access lines (and reply-from's, below) in one second (at most 5: one per refusal code, breaker transitions)`)
  d.check(failedLines.length === 0, `${failedLines.length} error lines logged, e.g. ${briefLine(failedLines[0])}`)
  const replyFromPerSecond = new Map<number, number>()
  for (const l of replyFrom) replyFromPerSecond.set(Math.floor(l.time! / 1000), (replyFromPerSecond.get(Math.floor(l.time! / 1000)) ?? 0) + 1)
  d.figure('reply_from_stack_lines', replyFrom.length)
  d.check(replyFrom.length === 0,
    `an expected refusal is logged twice, the second time with a stack and unthrottled (as before commit 1eafdec): besides the gateway's "request refused" line, @fastify/reply-from logs ` +
    `"response errored" at warn with the whole error and its stack for every failed upstream request (${replyFrom.length} lines for ${fl.filter(unavailable).length} answers 502, up to ` +
    `${Math.max(0, ...replyFromPerSecond.values())} in one second; ${replyFrom.length > 0 ? Math.round(replyFrom.reduce((n, l) => n + JSON.stringify(l).length, 0) / replyFrom.length) : 0} bytes each), e.g. ${briefLine(replyFrom[0])}`)
  const otherStacks = withStack.filter((l) => l.msg !== 'response errored')
  d.check(otherStacks.length === 0, `${otherStacks.length} other lines with a stack, e.g. ${briefLine(otherStacks[0])}`)
  // one access line per request the gateway answered (the drill's requests; a line may be lost only at the window's edges)
  // (the drill keeps the last 50,000 lines: with more, compare from the first line kept)
  const from = gw.dropped > 0 ? Math.max(started, Number(gw.logs[0]?.time ?? started)) : started
  const answered = load.samples.filter((s) => s.status !== 0 && s.at >= from && s.at + s.ms < ended).length
  const accessIn = access.filter((l) => l.time! >= from).length
  d.check(Math.abs(accessIn - answered) <= 4 * CONCURRENCY + 10, `access lines ${accessIn} against ${answered} requests answered: not one line per request`)

  // --- no crash ---
  const live = await fetch(`${gw.admin}/health/live`).then((r) => r.status, () => 0)
  d.check(gw.alive && live === 200, `the gateway exited or does not answer /health/live (${live}): ${JSON.stringify(gw.exit)}`)
})


function briefLine (l: LogRecord | undefined): string {
  if (l === undefined) return 'none'
  const { _at: _, ...r } = l
  return JSON.stringify(r).slice(0, 300)
}
