/**
 * A closed-loop HTTP load with a record of every request (start time, latency, status, error code),
 * for drills that judge latency and status per phase. Bounded in count and time; `stop()` ends it
 * early. Keep-alive connections through one undici Pool per origin, closed when the loop ends.
 */
import { performance } from 'node:perf_hooks'
import { Pool } from 'undici'

export interface Sample {
  /** Epoch ms when the request was sent. */
  at: number
  /** Milliseconds until the whole body arrived (or the request failed). */
  ms: number
  /** HTTP status, 0 when the request failed without a response. */
  status: number
  /** `code` of a JSON error body, or the client error code when status is 0. */
  code?: string
  /** The Retry-After header, when sent. */
  retryAfter?: string
  /** True when the response carried RateLimit-Limit (the rate limiter counted it). */
  counted: boolean
  /** Which target of the loop sent it (its index). */
  target: number
}

export interface Target {
  origin: string
  path: string
  headers?: Record<string, string>
}

export interface LoopOptions {
  /** Each worker sends to targets[worker % targets.length]. */
  targets: Target[]
  /** Workers per target. */
  concurrency: number
  durationMs: number
  /** Requests at most, over all workers. @defaultValue 200000 */
  maxRequests?: number
  /** Pause between two requests of one worker (ms). @defaultValue 0 */
  pauseMs?: number
}

export interface Loop {
  samples: Sample[]
  stop: () => void
  /** Resolves when every worker has ended and the pools are closed. */
  done: Promise<Sample[]>
}

async function one (pool: Pool, t: Target, target: number): Promise<Sample> {
  const at = Date.now()
  const started = performance.now()
  try {
    const res = await pool.request({ path: t.path, method: 'GET', headers: t.headers })
    const body = await res.body.text()
    const s: Sample = { at, ms: performance.now() - started, status: res.statusCode, counted: res.headers['ratelimit-limit'] !== undefined, target }
    const ra = res.headers['retry-after']
    if (typeof ra === 'string') s.retryAfter = ra
    if (res.statusCode >= 400) {
      try { s.code = String((JSON.parse(body) as { code?: unknown }).code) } catch { s.code = 'non-json' }
    }
    return s
  } catch (err) {
    return { at, ms: performance.now() - started, status: 0, code: (err as { code?: string }).code ?? 'error', counted: false, target }
  }
}

export function closedLoop (opts: LoopOptions): Loop {
  const samples: Sample[] = []
  const pools = new Map<string, Pool>()
  for (const t of opts.targets) {
    if (!pools.has(t.origin)) pools.set(t.origin, new Pool(t.origin, { connections: opts.concurrency * opts.targets.length, pipelining: 1 }))
  }
  const max = opts.maxRequests ?? 200_000
  const deadline = Date.now() + opts.durationMs
  let stopped = false
  let sent = 0
  const worker = async (w: number): Promise<void> => {
    const ti = w % opts.targets.length
    const t = opts.targets[ti]!
    const pool = pools.get(t.origin)!
    while (!stopped && Date.now() < deadline && sent < max) {
      sent++
      samples.push(await one(pool, t, ti))
      if (opts.pauseMs !== undefined && opts.pauseMs > 0) await new Promise((resolve) => setTimeout(resolve, opts.pauseMs))
    }
  }
  const workers = Array.from({ length: opts.concurrency * opts.targets.length }, (_, w) => worker(w))
  const done = Promise.all(workers).then(async () => {
    await Promise.all([...pools.values()].map((p) => p.close()))
    return samples
  })
  return { samples, stop: () => { stopped = true }, done }
}

/** Nearest-rank percentile (0-100) of `values`; NaN when empty. */
export function percentile (values: number[], p: number): number {
  if (values.length === 0) return Number.NaN
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!
}

/** The median of `values` (the mean of the two middle ones for an even count); NaN when empty. */
export function median (values: number[]): number {
  if (values.length === 0) return Number.NaN
  const sorted = [...values].sort((a, b) => a - b)
  const mid = sorted.length >> 1
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2
}

/** Answers by status (and code): `812x 200, 3x 503 PORTCULLIS_CIRCUIT_OPEN`, or `none`. */
export function summarize (ss: Sample[]): string {
  const by = new Map<string, number>()
  for (const s of ss) {
    const k = `${s.status}${s.code === undefined ? '' : ` ${s.code}`}`
    by.set(k, (by.get(k) ?? 0) + 1)
  }
  return [...by].map(([k, n]) => `${n}x ${k}`).join(', ') || 'none'
}

/** `12.3` for figures. */
export function ms1 (v: number): string {
  return Number.isFinite(v) ? v.toFixed(1) : 'n/a'
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))
