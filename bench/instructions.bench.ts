import { execFileSync, fork, spawnSync, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { cpSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import autocannon from 'autocannon'
import { startTestIssuer } from '../test/helpers/issuer.js'
import { compileTargets } from './targets.js'

/**
 * CPU instructions per proxied request, counted by valgrind's callgrind: the bare
 * `@fastify/http-proxy`, the full gateway (1,000 tokens, cache hits; every request a cache miss) and
 * the gateway with each part switched off in turn. Unlike req/s on a shared machine, an instruction
 * count does not depend on what else the machine runs: the same code and load give the same count
 * within ~1%, so the cost of each part, and of a change, is visible where the throughput bench
 * (`npm run bench -- gateway`) only sees noise. It leaves out what costs time without counting as
 * the process's instructions: the kernel (sockets, syscalls), cache misses.
 *
 * Each process under test runs under callgrind with instrumentation off while it warms up, then
 * counts BENCH_INSTR_REQUESTS requests. The targets run with V8's `--predictable` (every target
 * alike): one thread, no background compiling or marking, so that what runs when does not depend on
 * timing (valgrind runs one thread at a time, and without it the JIT and the collector settle
 * differently from run to run). The figure is the instructions spent handling requests: the
 * compiler's own functions and the garbage collector's are counted apart (both still run now and
 * then on this slow, simulated CPU).
 * Needs valgrind (`apt-get install valgrind`); ~12 minutes on 2 cores.
 */
const WARM = Number(process.env.BENCH_INSTR_WARMUP ?? 25_000)
const REQUESTS = Number(process.env.BENCH_INSTR_REQUESTS ?? 3_000)
const CONNECTIONS = 8
const PARALLEL = 2 // processes under callgrind at once (one per core here); counts do not depend on it

if (spawnSync('valgrind', ['--version']).status !== 0 || spawnSync('callgrind_control', ['-h']).status !== 0) {
  console.log('skipped: valgrind (callgrind) is not installed; `apt-get install valgrind` adds it')
  process.exit(0)
}

const buildDir = compileTargets()
const children: ChildProcess[] = []

interface Started { port: number, pid: number, child: ChildProcess }
function start (args: string[], env: Record<string, string>, callgrindOut?: string): Promise<Started> {
  const child = fork(join(buildDir, 'bench/gateway-target.js'), args, {
    ...(callgrindOut === undefined
      ? {}
      : {
          execPath: 'valgrind',
          execArgv: ['--tool=callgrind', '--instr-atstart=no', '--smc-check=all-non-file',
            `--callgrind-out-file=${callgrindOut}`, process.execPath, '--predictable']
        }),
    env: { ...process.env, ...env },
    stdio: ['ignore', 'ignore', 'ignore', 'ipc']
  })
  children.push(child)
  return new Promise((resolve, reject) => {
    child.once('message', (m) => { resolve({ port: (m as { port: number }).port, pid: child.pid!, child }) })
    child.once('exit', (code) => { reject(new Error(`gateway-target ${args[0]} exited with ${code}`)) })
  })
}

/** What a function's instructions are: the compiler's, the collector's, or handling requests. */
const JIT = /compiler::|Turbofan|Maglev|maglev::|baseline::|Bytecode|Parser|Scanner|AstNode|Compiler|Deoptimiz|TranslatedState|Zone::|Assembler|RegAlloc|LiveRange|CodeGenerator/
const GC = /Scaveng|Marking|MarkCompact|Sweep|Heap::|Evacuat|Compactor|RememberedSet|SlotSet|Worklist|ConcurrentMark|GCTracer|MemoryChunk|PagedSpace|NewSpace|SemiSpace|IncrementalMark|MinorMC|ObjectVisitor|IteratePointers|BodyDescriptor|RecordWrite|MemoryAllocator|LocalHeap|FreeList|Page::/
interface Count { handling: number, gc: number, jit: number }

/** Instructions of the dump by kind (callgrind_annotate, per function). */
function totals (out: string): Count {
  const c: Count = { handling: 0, gc: 0, jit: 0 }
  const annotated = execFileSync('callgrind_annotate', ['--threshold=100', `${out}.1`], { encoding: 'utf8', maxBuffer: 256 * 1024 * 1024 })
  for (const line of annotated.split('\n')) {
    const m = /^\s*([\d,]+) \([ \d.]+%\)\s+(.*)$/.exec(line)
    if (m === null || m[2]!.includes('PROGRAM TOTALS')) continue
    const n = Number(m[1]!.replaceAll(',', ''))
    if (JIT.test(m[2]!)) c.jit += n
    else if (GC.test(m[2]!)) c.gc += n
    else c.handling += n
  }
  return c
}

const issuer = await startTestIssuer()
const tokens = Array.from({ length: 1000 }, (_, i) => issuer.sign({ sub: `user-${i}`, role: 'user', permissions: ['order:read'] }, { ttl: 3600 }))
const up = await start(['upstream'], {})
const upstream = `http://127.0.0.1:${up.port}`

interface Target { name: string, args: string[], env: Record<string, string> }
const gw = (name: string, env: Record<string, string>): Target => ({ name, args: ['gateway', upstream, issuer.url], env })
const allTargets: Target[] = [
  { name: 'bare http-proxy', args: ['bare', upstream], env: {} },
  { name: 'Fastify route + undici Pool.request (lean)', args: ['lean', upstream], env: {} },
  gw('gateway, 1,000 tokens (cache hits)', {}),
  gw('gateway, every request a cache miss', { BENCH_TOKEN_CACHE: '0' }),
  gw('gateway - rate limit', { BENCH_FEATURES: 'rateLimit' }),
  gw('gateway - metrics', { BENCH_FEATURES: 'metrics' }),
  gw('gateway - info logs', { BENCH_FEATURES: 'logs' }),
  gw('gateway - verification', { BENCH_FEATURES: 'auth' }),
  gw('gateway - all four parts', { BENCH_FEATURES: 'auth,logs,metrics,rateLimit' }),
  gw('gateway - tracing plugin', { BENCH_FEATURES: 'tracing' })
]
// BENCH_INSTR_TARGETS=name,name: only the targets whose names contain one of these (the bare proxy always, the reference);
// BENCH_INSTR_KEEP=<dir>: the callgrind files are copied there
const only = (process.env.BENCH_INSTR_TARGETS ?? '').split(',').filter((x) => x !== '')
const targets = only.length === 0 ? allTargets : allTargets.filter((t, i) => i === 0 || only.some((o) => t.name.includes(o)))

async function count (t: Target, i: number): Promise<Count> {
  const out = join(buildDir, `callgrind-${i}.out`)
  const s = await start(t.args, t.env, out)
  let n = 0
  const load = async (amount: number): Promise<void> => {
    const r = await autocannon({
      url: `http://127.0.0.1:${s.port}/api/x`,
      connections: CONNECTIONS,
      amount,
      timeout: 60,
      requests: [{ method: 'GET', setupRequest: (req) => ({ ...req, headers: { ...req.headers, authorization: `Bearer ${tokens[n++ % tokens.length]!}` } }) }]
    })
    if (r.non2xx + r.errors > 0) throw new Error(`${t.name}: ${r.non2xx} non-2xx responses, ${r.errors} errors`)
  }
  await load(WARM)
  execFileSync('callgrind_control', ['--instr=on', String(s.pid)], { stdio: 'ignore' })
  await load(REQUESTS)
  execFileSync('callgrind_control', ['--instr=off', String(s.pid)], { stdio: 'ignore' })
  execFileSync('callgrind_control', ['--dump', String(s.pid)], { stdio: 'ignore' })
  const exited = once(s.child, 'exit')
  s.child.kill('SIGTERM')
  await exited // callgrind writes the rest of the run on exit
  return totals(out)
}

try {
  console.log(`instructions per request: ${WARM.toLocaleString('en')} requests to warm up uncounted, then ${REQUESTS.toLocaleString('en')} counted; ${CONNECTIONS} connections; ${PARALLEL} processes at a time`)
  const results = new Array<Count>(targets.length)
  let next = 0
  await Promise.all(Array.from({ length: PARALLEL }, async () => {
    while (next < targets.length) {
      const i = next++
      results[i] = await count(targets[i]!, i)
      process.stdout.write(`  counted ${targets[i]!.name}\n`)
    }
  }))
  const per = (x: number): string => Math.round(x / REQUESTS).toLocaleString('en')
  const bare = results[0]!.handling
  console.log('\ninstructions per request                  handling  bare / this     GC   compiler')
  for (const [i, t] of targets.entries()) {
    const r = results[i]!
    console.log(`${t.name.padEnd(40)} ${per(r.handling).padStart(9)} ${(bare / r.handling).toFixed(3).padStart(12)} ${per(r.gc).padStart(6)} ${per(r.jit).padStart(10)}`)
  }
  const byName = (name: string): Count | undefined => { const i = targets.findIndex((t) => t.name === name); return i === -1 ? undefined : results[i] }
  // the parts are measured against the full gateway: without it among the targets there is nothing to subtract from
  const full = byName('gateway, 1,000 tokens (cache hits)')?.handling ?? NaN
  console.log('\nper-part cost (full gateway minus the gateway without the part), handling instructions per request:')
  for (const [i, t] of targets.entries()) {
    if (Number.isNaN(full) || !t.name.startsWith('gateway - ') || t.name === 'gateway - all four parts') continue
    const d = full - results[i]!.handling
    console.log(`  ${t.name.replace('gateway - ', '').padEnd(26)} ${per(d).padStart(8)}  (${(d / full * 100).toFixed(1)}% of the gateway's)`)
  }
  const four = byName('gateway - all four parts')
  if (four !== undefined) console.log(`  ${'gateway without the four'.padEnd(26)} ${per(four.handling - bare).padStart(8)}  over the bare proxy (routing hooks, header hygiene, request id, breaker)`)
  const miss = byName('gateway, every request a cache miss')
  if (miss !== undefined && !Number.isNaN(full)) console.log(`  ${'a cache miss over a hit'.padEnd(26)} ${per(miss.handling - full).padStart(8)}  (valgrind's CPU has no AVX-512: OpenSSL takes a longer path than natively)`)
  const keep = process.env.BENCH_INSTR_KEEP
  if (keep !== undefined) {
    // the callgrind files, for callgrind_annotate (per-function counts)
    for (const [i, t] of targets.entries()) cpSync(join(buildDir, `callgrind-${i}.out.1`), join(keep, `${t.name.replace(/[^a-z0-9]+/gi, '-')}.callgrind`))
    console.log(`callgrind files in ${keep}`)
  }
} finally {
  for (const c of children) c.kill('SIGTERM')
  await issuer.close()
  rmSync(buildDir, { recursive: true, force: true })
}
