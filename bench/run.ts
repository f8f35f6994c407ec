import { spawnSync } from 'node:child_process'
import { readdirSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

/**
 * Runs every `bench/*.bench.ts` (or only those whose name contains an argument) one after another,
 * each in its own process so one benchmark's heap and JIT state cannot skew the next.
 * Usage: npm run bench [-- name ...]
 */
const dir = dirname(fileURLToPath(import.meta.url))
const filters = process.argv.slice(2)
const files = readdirSync(dir)
  .filter((f) => f.endsWith('.bench.ts'))
  .filter((f) => filters.length === 0 || filters.some((x) => f.includes(x)))
  .sort()

if (files.length === 0) {
  console.error(`no benchmark matches ${filters.join(', ')}`)
  process.exitCode = 1
}
let failed = 0
for (const f of files) {
  console.log(`\n=== ${f} ===`)
  const r = spawnSync(process.execPath, ['--import', 'tsx', join(dir, f)], { stdio: 'inherit' })
  if (r.status !== 0) failed++
}
if (failed > 0) process.exitCode = 1
