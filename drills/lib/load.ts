/**
 * Bounded load for drills: `concurrency` loops, each sending the request `next()` gives it until
 * `durationMs` passed, `maxRequests` were sent or `until()` says stop, whichever comes first. Only
 * 127.0.0.1 targets are accepted. Every 401 and 5xx (and network error) is kept with its time, URL
 * and the token's kid/replica, so a drill can tell a false 401 from an expired token.
 *
 *   const report = await runLoad({ concurrency: 8, durationMs: 60_000, until: () => rotations >= 20,
 *     next: (i) => { const t = pool.current(); return t && { url: `${gw[i % 2].base}/api/products`, token: t } } })
 */
import { setTimeout as sleep } from 'node:timers/promises'
import { Agent, request } from 'undici'
import type { IssuedToken } from './tokens.js'

export interface LoadRequest {
  url: string
  method?: 'GET' | 'POST'
  body?: unknown
  /** Sent as `Authorization: Bearer`; recorded with any 401/5xx. */
  token?: IssuedToken
  /** Groups statuses in `byLabel` (default: the URL's path). */
  label?: string
}

/** One notable response: a 401, a 5xx or a network error (status 0). */
export interface Hit {
  at: number
  ms: number
  status: number
  url: string
  label: string
  kid?: string
  from?: string
  /** Token exp (epoch s). */
  exp?: number
  /** Body (first 300 characters) or error message. */
  detail: string
}

export interface LoadReport {
  requests: number
  seconds: number
  byStatus: Record<string, number>
  byLabel: Record<string, Record<string, number>>
  /** When each label first got a 2xx (epoch ms, the request's start). */
  firstOkAt: Record<string, number>
  unauthorized: Hit[]
  serverErrors: Hit[]
  /** Connection errors and timeouts (status 0). */
  networkErrors: Hit[]
  /** Responses that were none of the above and not 2xx. */
  otherErrors: Hit[]
  p50Ms: number
  p99Ms: number
  maxMs: number
  /** Loop iterations that had nothing to send (next() returned undefined). */
  idle: number
}

export interface LoadOptions {
  concurrency: number
  /** Stop after this long (required: every load is bounded in time). */
  durationMs: number
  /** Stop after this many requests. */
  maxRequests?: number
  /** Checked before each request: true stops the load. */
  until?: () => boolean
  /** The next request for loop `worker` (its `i`-th); undefined: nothing now, try again in 20 ms. */
  next: (worker: number, i: number) => LoadRequest | undefined
  /** Pause after each request of a loop, ms (spares a 2-core machine). @defaultValue 2 */
  paceMs?: number
  /** Per-request deadline, ms. @defaultValue 10000 */
  timeoutMs?: number
  /** Keep at most this many hits per kind. @defaultValue 1000 */
  keepHits?: number
}

function percentile (sorted: number[], p: number): number {
  if (sorted.length === 0) return 0
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))]!
}

/** Runs the load to its bound and reports. Never throws for a failed request; throws for a non-local URL. */
export async function runLoad (o: LoadOptions): Promise<LoadReport> {
  const agent = new Agent({ connections: o.concurrency * 2, keepAliveTimeout: 10_000, pipelining: 1 })
  const started = Date.now()
  const deadline = started + o.durationMs
  const keep = o.keepHits ?? 1000
  const pace = o.paceMs ?? 2
  const timeout = o.timeoutMs ?? 10_000
  const r: LoadReport = { requests: 0, seconds: 0, byStatus: {}, byLabel: {}, firstOkAt: {}, unauthorized: [], serverErrors: [], networkErrors: [], otherErrors: [], p50Ms: 0, p99Ms: 0, maxMs: 0, idle: 0 }
  const latencies: number[] = []
  const stop = (): boolean => Date.now() >= deadline || (o.maxRequests !== undefined && r.requests >= o.maxRequests) || (o.until?.() ?? false)
  const add = (list: Hit[], h: Hit): void => { if (list.length < keep) list.push(h) }

  const loop = async (worker: number): Promise<void> => {
    for (let i = 0; !stop(); i++) {
      const req = o.next(worker, i)
      if (req === undefined) { r.idle++; await sleep(20); continue }
      const u = new URL(req.url)
      if (u.hostname !== '127.0.0.1') throw new Error(`load goes to 127.0.0.1 only, not ${req.url}`)
      const label = req.label ?? `${req.method ?? 'GET'} ${u.pathname}`
      const headers: Record<string, string> = {}
      if (req.token !== undefined) headers.authorization = `Bearer ${req.token.token}`
      if (req.body !== undefined) headers['content-type'] = 'application/json'
      r.requests++
      const t0 = Date.now()
      let status = 0
      let detail = ''
      try {
        const res = await request(req.url, {
          method: req.method ?? 'GET',
          headers,
          ...(req.body !== undefined ? { body: JSON.stringify(req.body) } : {}),
          dispatcher: agent,
          headersTimeout: timeout,
          bodyTimeout: timeout
        })
        status = res.statusCode
        const text = await res.body.text()
        if (status === 401 || status >= 400) detail = text.slice(0, 300)
      } catch (err) {
        detail = (err as Error).message
      }
      const ms = Date.now() - t0
      latencies.push(ms)
      const key = String(status)
      r.byStatus[key] = (r.byStatus[key] ?? 0) + 1
      const lab = (r.byLabel[label] ??= {})
      lab[key] = (lab[key] ?? 0) + 1
      if (status >= 200 && status < 300) r.firstOkAt[label] ??= t0
      if (status === 0 || status === 401 || status >= 400) {
        const hit: Hit = { at: t0, ms, status, url: req.url, label, detail, ...(req.token !== undefined ? { kid: req.token.kid, from: req.token.from, exp: req.token.exp } : {}) }
        if (status === 0) add(r.networkErrors, hit)
        else if (status === 401) add(r.unauthorized, hit)
        else if (status >= 500) add(r.serverErrors, hit)
        else add(r.otherErrors, hit)
      }
      if (pace > 0) await sleep(pace)
    }
  }
  try {
    await Promise.all(Array.from({ length: o.concurrency }, async (_, w) => await loop(w)))
  } finally {
    await agent.close()
  }
  latencies.sort((a, b) => a - b)
  r.seconds = (Date.now() - started) / 1000
  r.p50Ms = percentile(latencies, 0.5)
  r.p99Ms = percentile(latencies, 0.99)
  r.maxMs = latencies.at(-1) ?? 0
  return r
}

/** `401=3 200=5000` for messages. */
export function statusLine (r: LoadReport): string {
  return Object.entries(r.byStatus).sort().map(([k, v]) => `${k}=${v}`).join(',')
}
