import { promClient, collectHotCounts } from '@portcullis/metrics'
import { hotHistogram } from '../gateway/hot-histogram.js'

/**
 * What the gateway's one use of prom-client internals buys (gateway/hot-histogram.ts): CPU time per
 * observation of the per-route request-duration histogram, the gateway's way (counted in plain
 * numbers, added to prom-client's record on scrape) against prom-client's public API (a child from
 * `labels()` once, then `observe()`: label validation and hashing on every call), in the same run.
 * The gateway makes one observation per request.
 */
const ROUNDS = 15
const N = 200_000
const LABELS = { method: 'GET', route: '/api/*', status_code: 200 }
const values = Float64Array.from({ length: 1024 }, (_, i) => (i % 97) / 1000)

function cpuUs (): number {
  const u = process.cpuUsage()
  return u.user + u.system
}
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!

function histogram (hot: boolean): promClient.Histogram<string> {
  return new promClient.Histogram({
    name: 'http_request_duration_seconds',
    help: 'request duration in seconds',
    labelNames: ['method', 'route', 'status_code'],
    registers: [new promClient.Registry()],
    ...(hot ? { collect: collectHotCounts } : {})
  })
}

function run (observe: (v: number) => void): number {
  const t0 = cpuUs()
  for (let i = 0; i < N; i++) observe(values[i & 1023]!)
  return ((cpuUs() - t0) * 1000) / N // ns per observation
}

const publicChild = histogram(false).labels(LABELS)
const hotH = histogram(true)
const hot = hotHistogram(hotH, LABELS)
const pub: number[] = []
const ours: number[] = []
for (let r = 0; r < ROUNDS; r++) {
  pub.push(run((v) => { publicChild.observe(v) }))
  ours.push(run((v) => { hot.observe(v) }))
}
await hotH.get() // the scrape folds the counts in (and proves the path works)
const p = median(pub)
const o = median(ours)
console.log(`prom-client public API (labels().observe): ${p.toFixed(0)} ns per observation (median of ${ROUNDS} rounds of ${N})`)
console.log(`gateway hot histogram:                     ${o.toFixed(0)} ns per observation; ${(p / o).toFixed(1)}x less CPU, ${((p - o) / 1000).toFixed(2)} us saved per request`)
