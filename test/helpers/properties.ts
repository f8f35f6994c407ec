import { basename } from 'node:path'
import fc from 'fast-check'
import type { Test } from 'tap'

/** Cases per property: a short run in `npm test`; PROPERTY_RUNS raises it (drills/09-properties.drill.ts). */
export const RUNS = Number(process.env.PROPERTY_RUNS ?? 150)

/** Cases for a property: RUNS, or for a costly one a share of RUNS (never fewer than `floor`). */
export const runs = (share = 1, floor = 150): number => Math.min(RUNS, Math.max(floor, Math.ceil(RUNS * share)))

/**
 * Runs a property, reports its case count (PROPERTY_REPORT=1: one line on stderr for the drill,
 * named by the test file that runs it) and fails the test with the shrunk counterexample.
 */
export async function holds<Ts extends [unknown, ...unknown[]]> (t: Test, property: fc.IRawProperty<Ts>, numRuns: number, params: fc.Parameters<Ts> = {}): Promise<void> {
  const cpu = process.cpuUsage()
  const details = await fc.check(property, { numRuns, ...params })
  if (process.env.PROPERTY_REPORT === '1') {
    const used = process.cpuUsage(cpu)
    const cpuMs = Math.round((used.user + used.system) / 1000)
    process.stderr.write(`PROPERTY ${JSON.stringify({ file: basename(process.argv[1] ?? ''), name: t.name, cases: details.numRuns, ok: !details.failed, cpuMs })}\n`)
  }
  if (details.failed) t.fail(`${fc.defaultReportMessage(details) ?? 'property failed'}\n${String((details.errorInstance as Error | undefined)?.message ?? details.errorInstance)}`)
  else t.pass(`${details.numRuns} cases`)
}
