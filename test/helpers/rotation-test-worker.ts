// The rotation worker command with an injected clock, for tests that run real worker processes
// through simulated periods: `now` is the epoch-ms number in the file named by TEST_CLOCK_FILE, and
// the worker ticks whenever that number changes instead of on its schedule. TEST_HOLD_TX_MS holds
// each changing transaction open (to kill or signal the worker mid-transaction). The production
// command reads neither: these settings exist only in this test entry point.
import { readFileSync } from 'node:fs'
import { run } from '../../rotation/main.js'
import type { Trigger } from '../../rotation/worker.js'

export function fileClock (path: string): () => number {
  return () => {
    const v = Number(readFileSync(path, 'utf8').trim())
    if (!Number.isSafeInteger(v)) throw new Error(`test clock file ${path} does not hold an epoch-ms integer`)
    return v
  }
}

/** Fires whenever the simulated clock moves, so simulated time drives the schedule. */
export function clockTrigger (now: () => number, fire: () => void, pollMs = 5): Trigger {
  let last: number | undefined
  const timer = setInterval(() => {
    let v: number
    try {
      v = now()
    } catch {
      return // mid-rename: read again on the next poll
    }
    if (v !== last) {
      last = v
      fire()
    }
  }, pollMs)
  return { stop: () => clearInterval(timer) }
}

const clockFile = process.env.TEST_CLOCK_FILE
if (clockFile === undefined) throw new Error('rotation-test-worker: TEST_CLOCK_FILE is required')
const now = fileClock(clockFile)
run(process.argv.slice(2), {
  now,
  trigger: (fire) => clockTrigger(now, fire),
  triggerName: 'test clock file',
  holdTxMs: Number(process.env.TEST_HOLD_TX_MS ?? 0)
}).then((code) => {
  if (code !== 0 || process.exitCode === undefined) process.exitCode = code
}, (err: unknown) => {
  console.error(err instanceof Error ? err.message : String(err))
  process.exitCode = 1
})
