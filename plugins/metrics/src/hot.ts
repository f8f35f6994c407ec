import type * as promClient from '@platformatic/prom-client'

/** A counter child whose increments are summed in a plain number and added to the counter when it is read. */
export interface HotCounter { inc (): void }

const hotFlushers = new WeakMap<object, Array<() => void>>()

/**
 * The `collect` option of a counter (or histogram) that `hotCounter` (or a similar batcher) may serve:
 * prom-client runs it before every read (`registry.metrics()`, `metric.get()`), and it adds the
 * locally summed values.
 */
export function collectHotCounts (this: object): void {
  for (const flush of hotFlushers.get(this) ?? []) flush()
}

/** Runs `flush` before every read of `metric` (one created with `collect: collectHotCounts`). */
export function addFlusher (metric: object, flush: () => void): void {
  let flushers = hotFlushers.get(metric)
  if (flushers === undefined) hotFlushers.set(metric, flushers = [])
  flushers.push(flush)
}

/**
 * For a counter bumped on every request with the same labels: `inc()` adds to a local number (no
 * label hashing or validation per call), folded into `counter` on every read when the counter was
 * created with `collect: collectHotCounts`, so scrapes see exact counts. Other counters are
 * incremented directly.
 */
export function hotCounter<L extends string> (counter: promClient.Counter<L>, labels: promClient.LabelValues<L>): HotCounter {
  const frozen = Object.freeze({ ...labels }) as promClient.LabelValues<L>
  if ((counter as { collect?: unknown }).collect !== collectHotCounts) return { inc: () => { counter.inc(frozen) } }
  let pending = 0
  addFlusher(counter, () => {
    if (pending === 0) return
    const n = pending
    pending = 0
    counter.inc(frozen, n)
  })
  return { inc: () => { pending++ } }
}

