import { execFileSync, fork, spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { availableParallelism, tmpdir } from 'node:os'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import autocannon from 'autocannon'
import { Pool } from 'undici'
import { createServer } from 'node:http'
import { revocationDigest } from '@portcullis/core'
import { startTestIssuer } from '../test/helpers/issuer.js'
import { freePorts } from '../test/helpers/ports.js'
import { redisReachable, TEST_REDIS_URL } from '../test/helpers/redis.js'
import { ROOT, compileTargets } from './targets.js'

/**
 * Gateway throughput and latency against the same upstream, all in one run:
 *   direct upstream | bare @fastify/http-proxy | full gateway (verify + authorize + rate limit +
 *   metrics + info logs) with 1 token, 1,000 tokens, and every request a verification-cache miss |
 *   the full gateway with each part switched off in turn (per-part cost).
 * Each target is measured right after a slice of the bare proxy (paired slices, order rotated per
 * round); ratios are medians over ROUNDS of the paired ratios.
 * Then a fixed-rate run at half the bare proxy's maximum (p99 with microsecond resolution from an
 * open-loop generator: autocannon's histogram has 1 ms resolution), and the gateway's resident memory
 * after 100,000 distinct tokens. Then tracing: the gateway without the tracing plugin (what it was
 * before tracing), with it and no export (the default), and exporting a span per request over
 * OTLP/HTTP, each paired with the first; then the gateway without and with a revocation feed. The targets (docs/performance.md) are printed as PASS/FAIL.
 *
 * Every target gets the same requests (the bare proxy and the upstream are sent the token too, and
 * autocannon builds each request the same way), so the load generator costs the same whatever it
 * drives. With two or more cores the process under test runs alone on the last core and the load
 * generator and upstream share the others (taskset; BENCH_PIN=0 turns this off): otherwise the three
 * processes contend for two cores and the ratio measures the scheduler as much as the proxy.
 */
const ROUNDS = Math.max(3, Number(process.env.BENCH_ROUNDS ?? 5)) // medians of at least three
const DURATION = Number(process.env.BENCH_DURATION ?? 3) // seconds per measurement: short slices, many rounds, so load from elsewhere spreads over every target
const CONNECTIONS = 32
const DISTINCT_FOR_RSS = Number(process.env.BENCH_RSS_TOKENS ?? 100_000)
const TARGET = 'bench/gateway-target.ts'
const PHASES = new Set((process.env.BENCH_PHASES ?? 'throughput,fixed,rss,tracing,revocation,peers,workers,scale').split(','))
/** Command-line V8 flags of the reference run with a fixed heap cap (an alternative to the gateway's own tuning). */
const CAPPED_FLAGS = ['--max-semi-space-size=2', '--max-old-space-size=96']

let buildDir = ''

const CORES = availableParallelism()
const PIN = process.env.BENCH_PIN !== '0' && CORES >= 2 && spawnSync('taskset', ['-V']).status === 0
/** Pins a process and all its threads to the given cores (list syntax of taskset -c). */
function pin (pid: number, cores: string): void {
  if (PIN) execFileSync('taskset', ['-a', '-p', '-c', cores, String(pid)], { stdio: 'ignore' })
}
const UNDER_TEST_CORE = String(CORES - 1)
const GENERATOR_CORES = CORES === 2 ? '0' : `0-${CORES - 2}`

const children: ChildProcess[] = []
interface Started { port: number, pid: number, child: ChildProcess, v8: string[], /** the process and its workers */ pids: number[] }
function startTarget (args: string[], env: Record<string, string> = {}, viaTsx = false, flags: string[] = [], pinned = true): Promise<Started> {
  const script = viaTsx ? join(ROOT, 'bench/gateway-target.ts') : join(buildDir, 'bench/gateway-target.js')
  const child = fork(script, args, {
    execArgv: [...(viaTsx ? ['--import', 'tsx'] : []), '--expose-gc', ...flags],
    env: { ...process.env, ...env },
    stdio: ['ignore', 'ignore', 'inherit', 'ipc']
  })
  children.push(child)
  return new Promise((resolve, reject) => {
    child.once('message', (m) => {
      const msg = m as { port: number, v8?: string[], pids?: number[] }
      if (pinned) pin(child.pid!, args[0] === 'upstream' ? GENERATOR_CORES : UNDER_TEST_CORE)
      resolve({ port: msg.port, pid: child.pid!, child, v8: msg.v8 ?? [], pids: [child.pid!, ...(msg.pids ?? [])] })
    })
    child.once('exit', (code) => reject(new Error(`${TARGET} ${args[0]} exited with ${code}`)))
  })
}

/** pids: every process of the target (a gateway with workers), whose CPU is summed; xff: X-Forwarded-For values cycled with the tokens (distinct callers). */
interface Target { name: string, url: string, tokens: string[], pid?: number, pids?: number[], xff?: string[] }

/**
 * HAProxy in front of the upstream, verifying the bearer token (RS256, the issuer's key as PEM) with
 * `jwt_verify`, one thread, pinned like the other processes under test. Installs the Debian package
 * `haproxy` when missing (as root, or with sudo); returns why not when it cannot.
 */
async function startHaproxy (upstreamPort: number, publicKeyPem: string): Promise<{ port: number, pid: number } | string> {
  if (spawnSync('haproxy', ['-v']).status !== 0) {
    const sudo = process.getuid?.() === 0 ? [] : ['sudo', '-n']
    const apt = (args: string[]): number | null => spawnSync(sudo[0] ?? 'apt-get', [...sudo.slice(1), ...(sudo.length > 0 ? ['apt-get'] : []), ...args], { stdio: 'ignore', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } }).status
    console.log('\npeers: installing the Debian package haproxy')
    if (apt(['install', '-y', '-qq', '--no-install-recommends', 'haproxy']) !== 0 && (apt(['update', '-qq']) !== 0 || apt(['install', '-y', '-qq', '--no-install-recommends', 'haproxy']) !== 0)) {
      return 'haproxy is not installed and apt-get could not install it (run as root or with sudo, or `apt-get install haproxy`)'
    }
  }
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-bench-haproxy-'))
  const port = await new Promise<number>((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => { const p = (s.address() as { port: number }).port; s.close(() => resolve(p)) })
  })
  writeFileSync(join(dir, 'key.pem'), publicKeyPem)
  writeFileSync(join(dir, 'haproxy.cfg'), `global
  nbthread 1
  maxconn 4000
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend gateway
  bind 127.0.0.1:${port}
  http-request set-var(txn.bearer) http_auth_bearer
  http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('$.alg')
  http-request deny deny_status 401 unless { var(txn.alg) -m str RS256 }
  http-request deny deny_status 401 unless { var(txn.bearer),jwt_verify(txn.alg,"${join(dir, 'key.pem')}") -m int 1 }
  default_backend upstream
backend upstream
  http-reuse always
  server up 127.0.0.1:${upstreamPort}
`)
  const child = spawn('haproxy', ['-db', '-f', join(dir, 'haproxy.cfg')], { stdio: ['ignore', 'ignore', 'inherit'] })
  children.push(child)
  child.once('exit', () => rmSync(dir, { recursive: true, force: true }))
  for (let i = 0; i < 100; i++) {
    const ok = await fetch(`http://127.0.0.1:${port}/api/x`).then((r) => r.status, () => 0)
    if (ok === 401) break
    if (child.exitCode !== null) return `haproxy exited with ${child.exitCode}`
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  pin(child.pid!, UNDER_TEST_CORE)
  return { port, pid: child.pid! }
}
/** cpu: CPU time (user + system) of the process under test per request, µs: less sensitive to other load on the machine than req/s. */
interface Sample { rps: number, p50: number, p99: number, non2xx: number, cpu: number }

/** CPU time (user + system) a process has used, in µs (from /proc). */
function cpuMicros (pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ')
  return (Number(f[11]) + Number(f[12])) * 1e6 / 100 // clock ticks (USER_HZ 100)
}

async function load (t: Target, seconds: number, amount?: number): Promise<Sample> {
  let i = 0
  const pids = t.pids ?? (t.pid === undefined ? [] : [t.pid])
  const cpuNow = (): number => pids.reduce((sum, p) => sum + cpuMicros(p), 0)
  const cpu0 = cpuNow()
  const xff = t.xff
  const r = await autocannon({
    url: t.url,
    connections: CONNECTIONS,
    ...(amount === undefined ? { duration: seconds } : { amount }),
    requests: [{
      method: 'GET',
      setupRequest: xff === undefined
        ? (req) => ({ ...req, headers: { ...req.headers, authorization: `Bearer ${t.tokens[i++ % t.tokens.length]!}` } })
        : (req) => ({ ...req, headers: { ...req.headers, authorization: `Bearer ${t.tokens[i % t.tokens.length]!}`, 'x-forwarded-for': xff[i++ % xff.length]! } })
    }]
  })
  const cpu = pids.length === 0 ? NaN : (cpuNow() - cpu0) / Math.max(1, r.requests.total)
  return { rps: r.requests.average, p50: r.latency.p50, p99: r.latency.p99, non2xx: r.non2xx + r.errors, cpu }
}

/** Open loop: `rate` requests per second whatever the latency; latencies in ms with µs resolution. */
async function fixedRate (t: Target, rate: number, seconds: number): Promise<{ p50: number, p99: number, failed: number }> {
  const u = new URL(t.url)
  const pool = new Pool(u.origin, { connections: 64 })
  const headers = { authorization: `Bearer ${t.tokens[0]!}` }
  const total = Math.round(rate * seconds)
  const lat: number[] = []
  let sent = 0
  let done = 0
  let failed = 0
  const start = performance.now()
  await new Promise<void>((resolve) => {
    const timer = setInterval(() => {
      const due = Math.min(total, Math.floor((performance.now() - start) * rate / 1000))
      while (sent < due) {
        sent++
        const t0 = performance.now()
        pool.request({ method: 'GET', path: u.pathname, headers }).then(async (res) => {
          await res.body.dump()
          if (res.statusCode === 200) lat.push(performance.now() - t0)
          else failed++
        }, () => { failed++ }).finally(() => {
          if (++done === total) {
            clearInterval(timer)
            resolve()
          }
        })
      }
    }, 1)
  })
  await pool.close()
  lat.sort((a, b) => a - b)
  const pct = (p: number): number => lat[Math.min(lat.length - 1, Math.floor(lat.length * p))] ?? NaN
  return { p50: pct(0.5), p99: pct(0.99), failed }
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!
const rssMb = (pid: number): number => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]) / 1024
/** Live heap (MB) after a full GC in the target. */
function liveHeapMb (s: Started): Promise<number> {
  return new Promise((resolve) => {
    const on = (m: unknown): void => {
      const mem = (m as { mem?: { heapUsed: number } }).mem
      if (mem === undefined) return
      s.child.off('message', on)
      resolve(mem.heapUsed / 1048576)
    }
    s.child.on('message', on)
    s.child.send('mem')
  })
}
const fmt = (n: number, d = 0): string => n.toFixed(d)

async function main (): Promise<void> {
  const t0 = Date.now()
  pin(process.pid, GENERATOR_CORES)
  console.log(PIN ? `cores: process under test on core ${UNDER_TEST_CORE}, load generator and upstream on ${GENERATOR_CORES}` : `cores: ${CORES}, processes not pinned`)
  buildDir = compileTargets()
  console.log(`compiled the targets in ${fmt((Date.now() - t0) / 1000, 1)} s`)
  const issuer = await startTestIssuer()
  const claims = { role: 'user', permissions: ['order:read'] }
  const one = [issuer.sign({ sub: 'bench-user', ...claims }, { ttl: 3600 })]
  const thousand = Array.from({ length: 1000 }, (_, i) => issuer.sign({ sub: `user-${i}`, ...claims }, { ttl: 3600 }))

  const up = await startTarget(['upstream'])
  const upstream = `http://127.0.0.1:${up.port}`
  const gw = (env: Record<string, string>, viaTsx = false, flags: string[] = []): Promise<Started> => startTarget(['gateway', upstream, issuer.url], env, viaTsx, flags)
  const at = (p: { port: number }): string => `http://127.0.0.1:${p.port}/api/x`
  const checks: Array<[string, boolean, string]> = []
  let bareRps = 0
  let gatewayMaxRps = 0
  let bareTarget: Target | undefined
  let upstreamTarget: Target | undefined
  let fullTarget: Target | undefined

  if (PHASES.has('throughput') || PHASES.has('fixed')) {
    const [bare, full, miss, noRl, noMetrics, noLogs, noAuth] = await Promise.all([
      startTarget(['bare', upstream]),
      gw({}),
      gw({ BENCH_TOKEN_CACHE: '0' }),
      gw({ BENCH_FEATURES: 'rateLimit' }),
      gw({ BENCH_FEATURES: 'metrics' }),
      gw({ BENCH_FEATURES: 'logs' }),
      gw({ BENCH_FEATURES: 'auth' })
    ])
    console.log(`gateway processes: compiled JS started like \`portcullis gateway\` (createGateway); V8 flags: ${full.v8.filter((f) => f !== '--expose-gc').join(' ') || 'none'}`)
    const targets: Target[] = [
      // the same requests everywhere: the upstream and the bare proxy just ignore / forward the token
      { name: 'direct upstream', url: `${upstream}/x`, tokens: one, pid: up.pid },
      { name: 'bare http-proxy', url: at(bare), tokens: one, pid: bare.pid },
      { name: 'gateway, 1 token', url: at(full), tokens: one, pid: full.pid },
      { name: 'gateway, 1,000 tokens', url: at(full), tokens: thousand, pid: full.pid },
      { name: 'gateway, every request a cache miss', url: at(miss), tokens: thousand, pid: miss.pid },
      { name: 'gateway - rate limit', url: at(noRl), tokens: one, pid: noRl.pid },
      { name: 'gateway - metrics', url: at(noMetrics), tokens: one, pid: noMetrics.pid },
      { name: 'gateway - info logs', url: at(noLogs), tokens: one, pid: noLogs.pid },
      { name: 'gateway - verification', url: at(noAuth), tokens: one, pid: noAuth.pid }
    ]
    upstreamTarget = targets[0]
    bareTarget = targets[1]
    fullTarget = targets[2]
    if (!PHASES.has('throughput')) {
      await load(fullTarget!, 1) // warm the JIT as the throughput phase would
      bareRps = (await load(bareTarget!, DURATION)).rps
    } else {
      // Paired slices: each target is measured right after a slice of the bare proxy, and its ratio is
      // the median over rounds of (target / the bare slice just before). The machine's speed drifts
      // (other tenants); two back-to-back slices see the same machine, so the ratio holds still.
      const others = targets.filter((t) => t !== bareTarget)
      console.log(`warm-up (1 s each), then ${ROUNDS} rounds of ${others.length} pairs (bare proxy ${DURATION} s, then the target ${DURATION} s; order rotated), ${CONNECTIONS} connections`)
      for (const t of targets) {
        const w = await load(t, 1)
        if (w.non2xx > 0) throw new Error(`${t.name}: ${w.non2xx} non-2xx responses during warm-up`)
      }
      const samples = new Map<string, Sample[]>(targets.map((t) => [t.name, []]))
      const paired = new Map<string, Array<{ rps: number, cpu: number }>>(others.map((t) => [t.name, []]))
      const measure = async (t: Target): Promise<Sample> => {
        const s = await load(t, DURATION)
        if (s.non2xx > 0) throw new Error(`${t.name}: ${s.non2xx} non-2xx responses`)
        samples.get(t.name)!.push(s)
        return s
      }
      for (let r = 0; r < ROUNDS; r++) {
        const order = others.map((_, i) => others[(i + r) % others.length]!)
        for (const t of order) {
          const b = await measure(bareTarget!)
          const x = await measure(t)
          paired.get(t.name)!.push({ rps: x.rps / b.rps, cpu: b.cpu / x.cpu })
        }
        process.stdout.write(`  round ${r + 1}/${ROUNDS} done\n`)
      }
      const med = (name: string): Sample => {
        const s = samples.get(name)!
        return { rps: median(s.map((x) => x.rps)), p50: median(s.map((x) => x.p50)), p99: median(s.map((x) => x.p99)), non2xx: 0, cpu: median(s.map((x) => x.cpu)) }
      }
      /** Median of the paired ratios: x bare proxy (req/s) and bare CPU / this CPU per request. */
      const ratioOf = (name: string): { rps: number, cpu: number } => name === bareTarget!.name
        ? { rps: 1, cpu: 1 }
        : { rps: median(paired.get(name)!.map((p) => p.rps)), cpu: median(paired.get(name)!.map((p) => p.cpu)) }
      bareRps = med('bare http-proxy').rps
      const bareCpu = med('bare http-proxy').cpu
      console.log('\ntarget                                 req/s    p50 ms  p99 ms  x bare proxy   CPU us/req  bare CPU / this')
      console.log('                                       (medians of its slices)    (median of paired ratios)')
      for (const t of targets) {
        const m = med(t.name)
        const q = ratioOf(t.name)
        console.log(`${t.name.padEnd(38)} ${fmt(m.rps).padStart(7)}  ${fmt(m.p50).padStart(6)}  ${fmt(m.p99).padStart(6)}  ${fmt(q.rps, 2).padStart(6)}        ${fmt(m.cpu, 1).padStart(6)}  ${fmt(q.cpu, 2).padStart(6)}`)
      }
      const fullCpu = med('gateway, 1 token').cpu
      const full = ratioOf('gateway, 1 token')
      console.log(`\nper-part cost (full gateway, 1 token: ${fmt(full.rps, 2)}x the bare proxy's req/s, ${fmt(fullCpu, 1)} us CPU per request against ${fmt(bareCpu, 1)}; gained by switching the part off, from the paired ratios):`)
      for (const [part, name] of [['rate limit', 'gateway - rate limit'], ['metrics', 'gateway - metrics'], ['info logs', 'gateway - info logs'], ['verification + authorization', 'gateway - verification']] as const) {
        const off = ratioOf(name)
        const gain = (off.rps / full.rps - 1) * 100
        console.log(`  ${part.padEnd(30)} ${gain >= 0 ? '+' : ''}${fmt(gain, 1)}% req/s (${fmt(off.rps, 2)}x bare without it), ~${fmt(bareCpu / full.cpu - bareCpu / off.cpu, 1)} us CPU per request`)
      }
      gatewayMaxRps = med('gateway, 1 token').rps
      const ratio = (name: string): number => ratioOf(name).rps
      const cpuRatio = (name: string): string => `; CPU per request: bare/gateway ${fmt(ratioOf(name).cpu, 2)}`
      checks.push(
        ['full gateway >= 0.8x bare proxy (cache hits, 1 token)', ratio('gateway, 1 token') >= 0.8, `${fmt(ratio('gateway, 1 token'), 2)}x${cpuRatio('gateway, 1 token')}`],
        ['full gateway >= 0.8x bare proxy (cache hits, 1,000 tokens)', ratio('gateway, 1,000 tokens') >= 0.8, `${fmt(ratio('gateway, 1,000 tokens'), 2)}x${cpuRatio('gateway, 1,000 tokens')}`],
        ['full gateway >= 0.6x bare proxy (every request a cache miss)', ratio('gateway, every request a cache miss') >= 0.6, `${fmt(ratio('gateway, every request a cache miss'), 2)}x${cpuRatio('gateway, every request a cache miss')}`]
      )
    }
  }

  if (PHASES.has('fixed')) {
    const rate = Math.floor(bareRps / 2)
    console.log(`\nfixed rate ${rate} req/s (half the bare proxy's max), ${ROUNDS} interleaved runs of ${DURATION} s:`)
    const fixed = { bare: [] as number[], gw: [] as number[], bare50: [] as number[], gw50: [] as number[], up: [] as number[] }
    for (let r = 0; r < ROUNDS; r++) {
      // the upstream alone at the same rate: the floor the load generator and the machine give
      fixed.up.push((await fixedRate(upstreamTarget!, rate, DURATION)).p99)
      const b = await fixedRate(bareTarget!, rate, DURATION)
      const g = await fixedRate(fullTarget!, rate, DURATION)
      if (b.failed + g.failed > 0) throw new Error(`fixed-rate failures: bare ${b.failed}, gateway ${g.failed}`)
      fixed.bare.push(b.p99)
      fixed.gw.push(g.p99)
      fixed.bare50.push(b.p50)
      fixed.gw50.push(g.p50)
    }
    const p99Delta = median(fixed.gw) - median(fixed.bare)
    console.log(`  direct upstream   p99 ${fmt(median(fixed.up), 3)} ms (no proxy: the generator's and the machine's own tail)`)
    console.log(`  bare http-proxy   p50 ${fmt(median(fixed.bare50), 3)} ms  p99 ${fmt(median(fixed.bare), 3)} ms`)
    console.log(`  gateway, 1 token  p50 ${fmt(median(fixed.gw50), 3)} ms  p99 ${fmt(median(fixed.gw), 3)} ms  (p99 ${p99Delta >= 0 ? '+' : ''}${fmt(p99Delta, 3)} ms)`)
    if (median(fixed.bare50) > 5) console.log('  note: the bare proxy\'s p50 is above 5 ms: the machine is saturated (other load), so this comparison says little')
    if (gatewayMaxRps > 0) {
      const load = rate / gatewayMaxRps
      console.log(`  the gateway runs at ${fmt(load * 100)}% of its own measured maximum (${fmt(gatewayMaxRps)} req/s) here, the bare proxy at 50%${load > 0.8 ? ': near saturation, so its p99 is mostly queueing' : ''}`)
    }
    checks.push(['p99 at half the bare max <= bare p99 + 1 ms', p99Delta <= 1, `${p99Delta >= 0 ? '+' : ''}${fmt(p99Delta, 3)} ms`])
  }

  /**
   * Each variant paired with `base` (the pair's order alternating, as the variants' order), ROUNDS
   * rounds of DURATION s slices; prints and returns the medians of the paired ratios.
   */
  const paired = async (title: string, base: Target, variants: Target[]): Promise<Record<string, { rps: number, cpu: number, cpuUs: number }>> => {
    console.log(`\n${title}: ${ROUNDS} rounds of paired slices (${base.name} and the variant, ${DURATION} s each, the order alternating), ${CONNECTIONS} connections, 1 token`)
    for (const t of [base, ...variants]) {
      const w = await load(t, 1)
      if (w.non2xx > 0) throw new Error(`${t.name}: ${w.non2xx} non-2xx responses during warm-up`)
    }
    const pairs = new Map<string, Array<{ rps: number, cpu: number, cpuUs: number }>>(variants.map((t) => [t.name, []]))
    const baseCpu: number[] = []
    for (let r = 0; r < ROUNDS; r++) {
      for (const t of r % 2 === 0 ? variants : [...variants].reverse()) {
        // the pair's order alternates too: the slice measured second must not always be the variant
        const first = r % 2 === 0 ? base : t
        const s1 = await load(first, DURATION)
        const s2 = await load(first === base ? t : base, DURATION)
        const [b, x] = first === base ? [s1, s2] : [s2, s1]
        if (b.non2xx + x.non2xx > 0) throw new Error(`${t.name}: non-2xx responses`)
        baseCpu.push(b.cpu)
        pairs.get(t.name)!.push({ rps: x.rps / b.rps, cpu: x.cpu / b.cpu, cpuUs: x.cpu - b.cpu })
      }
    }
    console.log(`  baseline: ${base.name}, ${fmt(median(baseCpu), 1)} us CPU per request (median of its slices)`)
    const cost: Record<string, { rps: number, cpu: number, cpuUs: number }> = {}
    for (const t of variants) {
      const p = pairs.get(t.name)!
      const c = { rps: median(p.map((x) => x.rps)), cpu: median(p.map((x) => x.cpu)), cpuUs: median(p.map((x) => x.cpuUs)) }
      cost[t.name] = c
      console.log(`  ${t.name.padEnd(44)} req/s x${fmt(c.rps, 3)}  CPU per request x${fmt(c.cpu, 3)} (${c.cpuUs >= 0 ? '+' : ''}${fmt(c.cpuUs, 1)} us)  [medians of ${p.length} paired ratios]`)
    }
    return cost
  }

  if (PHASES.has('tracing')) {
    // A collector on the generator's cores: the tiny upstream answers every POST /v1/traces with 200.
    const collector = await startTarget(['upstream'])
    const [none, none2, off, on] = await Promise.all([
      gw({ BENCH_FEATURES: 'tracing' }),
      gw({ BENCH_FEATURES: 'tracing' }),
      gw({}),
      gw({ OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${collector.port}`, OTEL_BSP_SCHEDULE_DELAY: '1000' })
    ])
    const cost = await paired('tracing', { name: 'gateway without the tracing plugin', url: at(none), tokens: one, pid: none.pid }, [
      { name: 'the same, another process (A/A: the noise)', url: at(none2), tokens: one, pid: none2.pid },
      { name: 'gateway, tracing off (default)', url: at(off), tokens: one, pid: off.pid },
      { name: 'gateway, tracing on (OTLP export)', url: at(on), tokens: one, pid: on.pid }
    ])
    const offCost = cost['gateway, tracing off (default)']!
    const aa = cost['the same, another process (A/A: the noise)']!
    checks.push(['tracing off: CPU per request within 5% of the gateway without the plugin (beyond the A/A pair)', offCost.cpu - aa.cpu <= 0.05, `x${fmt(offCost.cpu, 3)} (${offCost.cpuUs >= 0 ? '+' : ''}${fmt(offCost.cpuUs, 1)} us); A/A x${fmt(aa.cpu, 3)}`])
  }

  if (PHASES.has('revocation')) {
    // A revocation feed on the generator's core holding 10,000 revoked sessions (the auth service's
    // GET /auth/revocations, as a verifier sees it): the token the load sends is not among them.
    const now = Date.now()
    let events = ''
    for (let i = 1; i <= 10_000; i++) events += `id: ${i}\nevent: revocation\ndata: {"kind":"sid","digest":"${revocationDigest('sid', `bench-session-${i}`)}","revokedAt":${now},"expiresAt":${now + 3_600_000}}\n\n`
    const feed = createServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' })
      res.write(events + 'event: ready\ndata: {"seq":10000}\n\n')
      const ping = setInterval(() => res.write(': ping\n\n'), 5000)
      res.on('close', () => clearInterval(ping))
    })
    await new Promise<void>((resolve) => feed.listen(0, '127.0.0.1', resolve))
    const feedUrl = `http://127.0.0.1:${(feed.address() as { port: number }).port}/auth/revocations`
    const [plain, plain2, following] = await Promise.all([gw({}), gw({}), gw({ BENCH_REVOCATIONS_URL: feedUrl })])
    const cost = await paired('revocation', { name: 'gateway without a revocation feed', url: at(plain), tokens: one, pid: plain.pid }, [
      { name: 'the same, another process (A/A: the noise)', url: at(plain2), tokens: one, pid: plain2.pid },
      { name: 'gateway following a feed (10,000 revoked)', url: at(following), tokens: one, pid: following.pid }
    ])
    const c = cost['gateway following a feed (10,000 revoked)']!
    const aa = cost['the same, another process (A/A: the noise)']!
    checks.push(['revocation on: CPU per request within 5% of the gateway without it (beyond the A/A pair)', c.cpu - aa.cpu <= 0.05, `x${fmt(c.cpu, 3)} (${c.cpuUs >= 0 ? '+' : ''}${fmt(c.cpuUs, 1)} us); req/s x${fmt(c.rps, 3)}; A/A x${fmt(aa.cpu, 3)}`])
    feed.closeAllConnections()
    feed.close()
  }

  if (PHASES.has('peers')) {
    // The gateway beside its peers, each paired with the bare proxy: HAProxy verifying the same token
    // with the same key (jwt_verify, one thread on the core under test), and the leanest Fastify route
    // streaming through undici's public API.
    const [bare, lean, full] = await Promise.all([startTarget(['bare', upstream]), startTarget(['lean', upstream]), gw({})])
    const variants: Target[] = [
      { name: 'lean Fastify route + undici Pool.request', url: at(lean), tokens: one, pid: lean.pid },
      { name: 'gateway, all features, 1 token', url: at(full), tokens: one, pid: full.pid }
    ]
    const haproxy = await startHaproxy(up.port, issuer.published[0]!.publicKey.export({ type: 'spki', format: 'pem' }).toString())
    if (typeof haproxy === 'string') console.log(`\npeers: no HAProxy row: ${haproxy}`)
    else variants.unshift({ name: 'HAProxy 2.6 jwt_verify (1 thread)', url: `http://127.0.0.1:${haproxy.port}/api/x`, tokens: one, pid: haproxy.pid })
    const cost = await paired('peers', { name: 'bare @fastify/http-proxy', url: at(bare), tokens: one, pid: bare.pid }, variants)
    const g = cost['gateway, all features, 1 token']!
    const h = cost['HAProxy 2.6 jwt_verify (1 thread)']
    checks.push(['gateway CPU per request <= 1.0x the bare proxy (cache hits)', g.cpu <= 1.0, `x${fmt(g.cpu, 3)}`])
    if (h !== undefined) checks.push(['gateway CPU per request <= 1.5x HAProxy jwt_verify', g.cpu / h.cpu <= 1.5, `x${fmt(g.cpu / h.cpu, 2)} (gateway x${fmt(g.cpu, 3)}, HAProxy x${fmt(h.cpu, 3)} of the bare proxy)`])
  }

  if (PHASES.has('workers')) {
    // `portcullis gateway` itself with 1 and with 2 workers, the CPU of every process of each summed
    // (primary included). With Redis the limits are shared (required for 2 workers); without, the
    // route file has none, for both. Two gateways with 2 workers: one with all its processes on the
    // core under test, like the 1-worker one (what the workers cost per request: coordination), one
    // free on every core (throughput; on this machine it shares them with the load generator and
    // the upstream, so it measures that contention too).
    const redis = await redisReachable()
    const common: Record<string, string> = redis ? { REDIS_URL: TEST_REDIS_URL } : { BENCH_RATE_LIMIT: 'off' }
    const [p1, a1, p2, a2, p3, a3] = await freePorts(6) as [number, number, number, number, number, number]
    const w1 = await startTarget(['cli', upstream, issuer.url], { ...common, GATEWAY_WORKERS: '1', BENCH_PORT: String(p1), BENCH_ADMIN_PORT: String(a1) })
    const w2 = await startTarget(['cli', upstream, issuer.url], { ...common, GATEWAY_WORKERS: '2', BENCH_PORT: String(p2), BENCH_ADMIN_PORT: String(a2) })
    for (const p of w2.pids) pin(p, UNDER_TEST_CORE)
    const w2free = await startTarget(['cli', upstream, issuer.url], { ...common, GATEWAY_WORKERS: '2', BENCH_PORT: String(p3), BENCH_ADMIN_PORT: String(a3) }, false, [], false)
    console.log(`\nworkers: \`portcullis gateway\` with GATEWAY_WORKERS=1 and =2 (a primary and 2 workers); rate limits ${redis ? 'in Redis (REDIS_URL)' : 'off (no Redis reachable)'}`)
    const cost = await paired('workers', { name: '1 worker', url: at(w1), tokens: one, pid: w1.pid, pids: w1.pids }, [
      { name: `2 workers, all on core ${UNDER_TEST_CORE}`, url: at(w2), tokens: one, pid: w2.pid, pids: w2.pids },
      { name: `2 workers on ${CORES} cores, shared with load`, url: at(w2free), tokens: one, pid: w2free.pid, pids: w2free.pids }
    ])
    const same = cost[`2 workers, all on core ${UNDER_TEST_CORE}`]!
    const free = cost[`2 workers on ${CORES} cores, shared with load`]!
    console.log(`  the load generator and upstream ran on core ${GENERATOR_CORES}; 2 workers on every core: req/s x${fmt(free.rps, 2)}, CPU per request x${fmt(free.cpu, 2)} (contention with them included)`)
    checks.push(['2 workers: CPU per request within 1.1x of 1 worker (same core)', same.cpu <= 1.1, `x${fmt(same.cpu, 3)}; on every core with the load generator: throughput x${fmt(free.rps, 2)}, CPU x${fmt(free.cpu, 2)}`])
    console.log(`  resident memory: 1 worker ${fmt(rssMb(w1.pid))} MB; 2 workers: primary ${fmt(rssMb(w2.pid))} MB, workers ${w2.pids.slice(1).map((p) => `${fmt(rssMb(p))} MB`).join(', ')}`)
    for (const g of [w1, w2, w2free]) g.child.kill('SIGTERM')
  }

  if (PHASES.has('scale')) {
    // Cost as the work grows: 1,000 routes in the route file against 1; then one gateway taking the
    // caller from X-Forwarded-For (its /api without verification, so the address is the caller), its
    // limiter fed 100,000 distinct callers, against one caller.
    const [small, big, proxied] = await Promise.all([gw({}), gw({ BENCH_ROUTES: '1000' }), gw({ BENCH_TRUST_PROXY: '1' })])
    const routes = await paired('routes', { name: '1 route', url: at(small), tokens: one, pid: small.pid }, [
      { name: '1,000 routes', url: at(big), tokens: one, pid: big.pid }
    ])
    const rssSmall = rssMb(small.pid)
    const rssBig = rssMb(big.pid)
    console.log(`  resident memory: 1 route ${fmt(rssSmall)} MB, 1,000 routes ${fmt(rssBig)} MB (+${fmt(rssBig - rssSmall, 1)} MB)`)
    checks.push(['1,000 routes: CPU per request within 1.1x of 1 route', routes['1,000 routes']!.cpu <= 1.1, `x${fmt(routes['1,000 routes']!.cpu, 3)}, +${fmt(rssBig - rssSmall, 1)} MB`])
    const CALLERS = 100_000
    const ips = Array.from({ length: CALLERS }, (_, i) => `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`)
    const before = rssMb(proxied.pid)
    // every caller seen once (the limiter holds them all: its in-memory store keeps 100,000)
    const fill = await load({ name: 'fill', url: at(proxied), tokens: one, xff: ips }, 0, CALLERS)
    if (fill.non2xx > 0) throw new Error(`callers: ${fill.non2xx} non-2xx responses`)
    const after = rssMb(proxied.pid)
    const callers = await paired('callers', { name: '1 caller', url: at(proxied), tokens: one, pid: proxied.pid, xff: ['10.255.255.254'] }, [
      { name: '100,000 callers', url: at(proxied), tokens: one, pid: proxied.pid, xff: ips }
    ])
    console.log(`  resident memory: ${fmt(before)} MB before, ${fmt(after)} MB with ${CALLERS.toLocaleString('en')} callers in the limiter (+${fmt(after - before, 1)} MB)`)
    checks.push(['100,000 callers: CPU per request within 1.1x of 1 caller', callers['100,000 callers']!.cpu <= 1.1, `x${fmt(callers['100,000 callers']!.cpu, 3)}, +${fmt(after - before, 1)} MB`])
    for (const g of [small, big, proxied]) g.child.kill('SIGTERM')
  }

  if (PHASES.has('rss')) {
    console.log(`\nresident memory after ${DISTINCT_FOR_RSS.toLocaleString('en')} distinct tokens (each a fresh full gateway):`)
    const signStart = Date.now()
    const many = Array.from({ length: DISTINCT_FOR_RSS }, (_, i) => issuer.sign({ sub: `rss-${i}`, ...claims }, { ttl: 3600 }))
    console.log(`  ${DISTINCT_FOR_RSS.toLocaleString('en')} tokens signed in ${fmt((Date.now() - signStart) / 1000, 1)} s`)
    // The first run is the target: `portcullis gateway` as shipped (bin/portcullis.js runs the compiled
    // build that `npm ci` / `npm install` make, with the gateway's own V8 tuning). The others are for reference.
    const runs: Array<[string, boolean, string[], Record<string, string>]> = [
      ['compiled JS, as shipped (GATEWAY_MEMORY_TUNING on)', false, [], {}],
      ['compiled JS, GATEWAY_MEMORY_TUNING=false (V8 defaults)', false, [], { GATEWAY_MEMORY_TUNING: 'false' }],
      [`compiled JS, tuning off, ${CAPPED_FLAGS.join(' ')}`, false, CAPPED_FLAGS, { GATEWAY_MEMORY_TUNING: 'false' }],
      ['sources through tsx (no build, or PORTCULLIS_TSX=1)', true, [], {}]
    ]
    for (const [label, viaTsx, flags, env] of runs) {
      const g = await gw(env, viaTsx, flags)
      const before = rssMb(g.pid)
      const liveBefore = await liveHeapMb(g)
      const s = await load({ name: 'rss', url: at(g), tokens: many }, 0, DISTINCT_FOR_RSS)
      if (s.non2xx > 0) throw new Error(`rss run: ${s.non2xx} non-2xx responses`)
      const after = rssMb(g.pid)
      const liveAfter = await liveHeapMb(g)
      console.log(`  ${label.padEnd(62)} RSS ${fmt(before)} -> ${fmt(after)} MB; live heap after GC ${fmt(liveBefore)} -> ${fmt(liveAfter)} MB (${fmt(s.rps)} req/s, every token new)`)
      if (label === runs[0]![0]) checks.push([`RSS after ${DISTINCT_FOR_RSS.toLocaleString('en')} distinct tokens <= 150 MB (${label})`, after <= 150, `${fmt(after)} MB`])
      g.child.kill('SIGTERM')
    }
  }

  console.log("\ntargets:")
  for (const [what, ok, got] of checks) console.log(`  ${ok ? 'PASS' : 'FAIL'}  ${what}: ${got}`)
  console.log(`\ntotal bench time ${fmt((Date.now() - t0) / 1000)} s`)
  await issuer.close()
}

main().catch((err: unknown) => {
  console.error(err)
  process.exitCode = 1
}).finally(() => {
  for (const c of children) c.kill('SIGTERM')
  if (buildDir !== '') rmSync(buildDir, { recursive: true, force: true })
})
