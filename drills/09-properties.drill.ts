/**
 * Drill 09, the long run of the property-based tests (test/properties*.test.ts, fast-check): each
 * file runs standalone (`node --import tsx <file>`, TAP on stdout) with PROPERTY_RUNS=100000, two
 * files at a time (the longest first). Every property reports its case count on stderr
 * (PROPERTY_REPORT=1: `PROPERTY {"file","name","cases","ok"}`).
 *
 * Passes when every file exits 0, every property reports and holds, and each required area (token
 * decoder and verifier, path normalisation and route matching, header hygiene, the route file, the
 * auth service's request bodies) has at least one property run at 100,000 cases or more. Properties
 * that pay two HTTP hops, a scrypt hash, file writes or a gateway build per case run a share of
 * PROPERTY_RUNS (written next to each: 1,000 to 20,000 cases, ~10 s of CPU each); the summary line
 * counts them apart (`reduced`). The per-property counts go to stderr.
 */
import { spawn } from 'node:child_process'
import { availableParallelism } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Drill } from './lib/summary.js'

const ROOT = fileURLToPath(new URL('..', import.meta.url))
const RUNS = 100_000
/** A file still running after this is killed (and the drill fails), within the drill's 5 minutes. */
const FILE_BUDGET_MS = 240_000

/** The property files, the area each covers, and its rough cost (seconds of CPU at 100,000): the dearest start first. */
const FILES: Array<{ file: string, area: string, cost: number }> = [
  { file: 'test/properties-routes.test.ts', area: 'route-file', cost: 90 },
  { file: 'test/properties.test.ts', area: 'tokens', cost: 85 },
  { file: 'test/properties-auth.test.ts', area: 'auth-bodies', cost: 80 },
  { file: 'test/properties-paths.test.ts', area: 'paths', cost: 25 },
  { file: 'test/properties-headers.test.ts', area: 'headers', cost: 15 }
]

interface PropertyReport { file: string, name: string, cases: number, ok: boolean, cpuMs: number }
interface FileResult { file: string, area: string, code: number | null, signal: string | null, ms: number, properties: PropertyReport[], failures: string[] }

function runFile (file: string, area: string): Promise<FileResult> {
  const start = Date.now()
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--import', 'tsx', join(ROOT, file)], {
      cwd: ROOT,
      env: { ...process.env, PROPERTY_RUNS: String(RUNS), PROPERTY_REPORT: '1', TAP_TIMEOUT: '0' },
      stdio: ['ignore', 'pipe', 'pipe']
    })
    let out = ''
    let err = ''
    child.stdout.setEncoding('utf8').on('data', (d: string) => { out += d })
    child.stderr.setEncoding('utf8').on('data', (d: string) => { err += d })
    const timer = setTimeout(() => child.kill('SIGKILL'), FILE_BUDGET_MS)
    child.on('exit', (code, signal) => {
      clearTimeout(timer)
      const properties = err.split('\n').filter((l) => l.startsWith('PROPERTY ')).map((l) => JSON.parse(l.slice(9)) as PropertyReport)
      // a failed assertion's TAP line and the counterexample fast-check printed under it
      const failures = out.split('\n').filter((l) => /^\s*not ok /.test(l) && !/# (SKIP|TODO)/.test(l)).map((l) => l.trim().slice(0, 2000))
      resolve({ file, area, code, signal, ms: Date.now() - start, properties, failures })
    })
  })
}

await new Drill('09-properties').run(async (d) => {
  const queue = [...FILES].sort((a, b) => b.cost - a.cost)
  const results: FileResult[] = []
  const worker = async (): Promise<void> => {
    for (let next = queue.shift(); next !== undefined; next = queue.shift()) {
      d.log(`running ${next.file} with PROPERTY_RUNS=${RUNS}`)
      const r = await runFile(next.file, next.area)
      d.log(`${next.file}: exit ${r.code ?? r.signal} in ${(r.ms / 1000).toFixed(0)}s, ${r.properties.length} properties`)
      results.push(r)
    }
  }
  await Promise.all(Array.from({ length: Math.min(2, availableParallelism()) }, worker))

  const all = results.flatMap((r) => r.properties)
  for (const p of all) d.log(`  ${p.ok ? 'ok  ' : 'FAIL'} ${String(p.cases).padStart(6)} cases ${(p.cpuMs / 1000).toFixed(1).padStart(5)}s cpu  ${p.file}: ${p.name}`)
  for (const r of results) {
    d.check(r.code === 0, `${r.file} exited ${r.code ?? r.signal}${r.ms >= FILE_BUDGET_MS ? ` (killed after ${FILE_BUDGET_MS / 1000}s)` : ''}`)
    d.check(r.properties.length > 0, `${r.file} reported no property`)
    for (const f of r.failures) d.log(`${r.file}: ${f}`)
  }
  for (const p of all) d.check(p.ok, `property failed: ${p.file}: ${p.name}`)
  const areas = new Map(FILES.map((f) => [f.area, 0]))
  for (const r of results) for (const p of r.properties) areas.set(r.area, Math.max(areas.get(r.area)!, p.ok ? p.cases : 0))
  for (const [area, most] of areas) d.check(most >= RUNS, `no property of ${area} ran ${RUNS} cases (most: ${most})`)

  const full = all.filter((p) => p.cases >= RUNS)
  const reduced = all.filter((p) => p.cases < RUNS)
  d.figure('properties', all.length)
  d.figure('full', `${full.length}x>=${RUNS}`)
  d.figure('reduced', `${reduced.length}(${reduced.length === 0 ? '-' : `${Math.min(...reduced.map((p) => p.cases))}..${Math.max(...reduced.map((p) => p.cases))}`})`)
  d.figure('total', all.reduce((n, p) => n + p.cases, 0))
  d.figure('areas', `${[...areas.values()].filter((n) => n >= RUNS).length}/${areas.size}`)
  d.figure('failed', all.filter((p) => !p.ok).length)
  // CPU seconds the properties took (the wall time depends on what else the machine runs)
  d.figure('cpu', `${(all.reduce((n, p) => n + p.cpuMs, 0) / 1000).toFixed(0)}s`)
})
