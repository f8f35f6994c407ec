import { setTimeout as sleep } from 'node:timers/promises'
import { Cron } from 'croner'
import type { Logger } from 'pino'
import type { AppliedChange, ApplyOptions, KeySize, KeyStore } from '../store/keys.js'
import type { KeyTimings } from '../store/key-timings.js'
import { nextChangeTime, tickDecision } from '../store/key-lifecycle.js'
import type { RotationMetrics } from './metrics.js'

export interface TickOutcome {
  result: 'changed' | 'unchanged'
  changes: AppliedChange[]
  /** Another worker made the key this one generated unnecessary. */
  discardedKey: boolean
  now: number
  /** Next instant something is due (epoch ms), or null. */
  next: number | null
}

export interface WorkerOptions {
  store: KeyStore
  timings: KeyTimings
  keySize: KeySize
  log: Logger
  metrics?: RotationMetrics
  /** Hold each changing transaction open this long before commit and log `tx_hold` (tests kill or signal the worker mid-transaction). @defaultValue 0 */
  holdTxMs?: number
}

/**
 * Runs ticks: one store transaction applying the lifecycle rules. Ticks never overlap in one
 * process (a request during a tick runs one more tick after it), and `stop()` lets a tick that is
 * inside its transaction finish while one that has not reached it yet gives up without a trace.
 */
export class RotationWorker {
  readonly #o: WorkerOptions
  readonly #abort = new AbortController()
  #running: Promise<void> | undefined
  #again = false
  #lastError: string | undefined

  constructor (opts: WorkerOptions) {
    this.#o = opts
  }

  get stopping (): boolean { return this.#abort.signal.aborted }

  /** The last scheduled tick's failure, cleared by a success (readiness). */
  get lastError (): string | undefined { return this.#lastError }

  /** One tick; throws on failure (counted as `result="error"`). */
  async tick (): Promise<TickOutcome> {
    const { store, timings, log, metrics } = this.#o
    const opts: ApplyOptions = { keySize: this.#o.keySize, signal: this.#abort.signal }
    const hold = this.#o.holdTxMs ?? 0
    try {
      const res = await store.apply(tickDecision(timings), {
        ...opts,
        ...(hold > 0 ? { beforeCommit: async () => { log.info({ event: 'tx_hold' }, 'holding the transaction (test hook)'); await sleep(hold) } } : {})
      })
      const outcome: TickOutcome = {
        result: res.changes.length > 0 ? 'changed' : 'unchanged',
        changes: res.changes,
        discardedKey: res.discardedKey,
        now: res.now,
        next: nextChangeTime(res.keys, timings)
      }
      metrics?.recordRun(outcome.result, res.keys)
      const line = { event: 'tick', result: outcome.result, now: res.now, changes: res.changes.length, discardedKey: res.discardedKey, next: outcome.next === null ? null : new Date(outcome.next).toISOString() }
      if (outcome.result === 'changed') log.info(line, 'rotation tick changed the key set')
      else log.debug(line, 'rotation tick: nothing due')
      return outcome
    } catch (err) {
      metrics?.recordRun('error')
      throw err
    }
  }

  /** Asks for a tick (from the schedule); errors are logged and counted, the daemon keeps going. */
  requestTick (): void {
    if (this.stopping) return
    if (this.#running !== undefined) {
      this.#again = true
      return
    }
    this.#running = (async () => {
      do {
        this.#again = false
        try {
          await this.tick()
          this.#lastError = undefined
        } catch (err) {
          if (this.stopping) break
          this.#lastError = `last rotation tick failed: ${(err as Error).message}`
          this.#o.log.error({ event: 'tick_failed', err: { message: (err as Error).message, code: (err as { code?: string }).code } }, 'rotation tick failed')
        }
      } while (this.#again && !this.stopping)
    })().finally(() => { this.#running = undefined })
  }

  /** Stops asking for ticks and waits for a running one: committed or rolled back, never half. */
  async stop (): Promise<void> {
    this.#abort.abort()
    await this.#running
  }
}

export interface Trigger { stop(): void }

/** Production trigger: a croner schedule (protect: a slow tick is never run twice at once). */
export function scheduleTrigger (pattern: string, fire: () => void): Trigger {
  const job = new Cron(pattern, { protect: true }, fire)
  return { stop: () => job.stop() }
}
