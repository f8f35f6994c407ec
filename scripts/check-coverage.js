// Run by `npm test` after tap: at least 90% of the lines of each plugin package (plugins/<name>/src)
// must be covered by the suite. tap measures coverage (test/coverage-map.js limits it to those
// sources) but only knows "100% or allow incomplete", so the threshold is checked here.
//
// tsx's inline source maps carry `sourcesContent: [null]`, which the coverage converter takes for
// an empty original file (every file then counts as one line); dropping the null makes it read the
// original source from disk, as intended. Then `tap report` renders the summary again.
import { spawnSync } from 'node:child_process'
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join, relative } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = fileURLToPath(new URL('..', import.meta.url))
export const MIN_LINES_PCT = 90
const dir = join(root, '.tap/coverage')
if (!existsSync(dir)) {
  console.error('check-coverage: no coverage in .tap/coverage: run tap first')
  process.exit(1)
}
for (const f of readdirSync(dir).filter((n) => n.endsWith('.json'))) {
  const path = join(dir, f)
  const cov = JSON.parse(readFileSync(path, 'utf8'))
  let changed = false
  for (const entry of Object.values(cov['source-map-cache'] ?? {})) {
    const sc = entry?.data?.sourcesContent
    if (Array.isArray(sc) && sc.every((s) => s === null)) {
      delete entry.data.sourcesContent
      changed = true
    }
  }
  if (changed) writeFileSync(path, JSON.stringify(cov))
}
const tap = join(root, 'node_modules/tap/dist/esm/run.mjs')
const r = spawnSync(process.execPath, [tap, 'report', 'json-summary'], { cwd: root, stdio: ['ignore', 'ignore', 'inherit'] })
if (r.status !== 0) {
  console.error('check-coverage: tap report failed')
  process.exit(1)
}
const summary = JSON.parse(readFileSync(join(root, '.tap/report/coverage-summary.json'), 'utf8'))
const byPackage = new Map()
for (const [file, s] of Object.entries(summary)) {
  const m = /^plugins\/([^/]+)\/src\//.exec(relative(root, file))
  if (m === null) continue
  const p = byPackage.get(m[1]) ?? { total: 0, covered: 0 }
  p.total += s.lines.total
  p.covered += s.lines.covered
  byPackage.set(m[1], p)
}
const packages = readdirSync(join(root, 'plugins')).filter((d) => existsSync(join(root, 'plugins', d, 'package.json')))
let failed = false
for (const name of packages) {
  const p = byPackage.get(name)
  const pct = p === undefined || p.total === 0 ? 0 : (100 * p.covered) / p.total
  const ok = pct >= MIN_LINES_PCT
  if (!ok) failed = true
  console.log(`coverage @portcullis/${name}: ${pct.toFixed(1)}% of ${p?.total ?? 0} lines ${ok ? 'ok' : `FAIL (< ${MIN_LINES_PCT}%)`}`)
}
if (failed) process.exit(1)
