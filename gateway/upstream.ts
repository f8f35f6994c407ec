import { Pool } from 'undici'
import { GatewayOverloadedError, UpstreamTimeoutError, UpstreamUnavailableError } from './errors.js'
import type { Timeouts } from './config.js'

export const DEFAULT_POOL_CONNECTIONS = 128
export const DEFAULT_KEEP_ALIVE = 30_000 // ms

/** Why a request to an upstream failed: the `kind` label of `portcullis_upstream_errors_total`. */
export const UPSTREAM_ERROR_KINDS = ['refused', 'reset', 'dns', 'connect_timeout', 'headers_timeout', 'body_timeout', 'circuit_open', 'local_resources', 'other'] as const
export type UpstreamErrorKind = typeof UPSTREAM_ERROR_KINDS[number]

const KIND_BY_CODE: Record<string, UpstreamErrorKind> = {
  ECONNREFUSED: 'refused',
  ECONNRESET: 'reset',
  EPIPE: 'reset',
  UND_ERR_SOCKET: 'reset',
  UND_ERR_CLOSED: 'reset',
  ENOTFOUND: 'dns',
  EAI_AGAIN: 'dns',
  UND_ERR_CONNECT_TIMEOUT: 'connect_timeout',
  ETIMEDOUT: 'connect_timeout',
  UND_ERR_HEADERS_TIMEOUT: 'headers_timeout',
  UND_ERR_BODY_TIMEOUT: 'body_timeout',
  // the gateway's own process or machine out of file descriptors (or memory for sockets)
  EMFILE: 'local_resources',
  ENFILE: 'local_resources',
  ENOBUFS: 'local_resources'
}

/** Errors on which an idempotent request without a body is sent once more (the request never reached the app). */
export const RETRYABLE_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'UND_ERR_SOCKET'])

/** reply-from wraps undici's error; the code we classify is on the cause. */
export function errorCode (err: unknown): string | undefined {
  let e = err as { code?: unknown, cause?: unknown } | undefined
  for (let i = 0; i < 3 && e !== undefined && e !== null; i++) {
    if (typeof e.code === 'string' && !e.code.startsWith('FST_')) return e.code
    e = e.cause as typeof e
  }
  return undefined
}

export function classify (err: unknown): UpstreamErrorKind {
  const code = errorCode(err)
  if (code !== undefined && KIND_BY_CODE[code] !== undefined) return KIND_BY_CODE[code]
  // reply-from reports its own timeout without an undici code
  if ((err as { statusCode?: number }).statusCode === 504) return 'headers_timeout'
  return 'other'
}

/** Whether a failed request is the upstream's fault and counts toward opening its breaker. */
export function countsAgainstBreaker (kind: UpstreamErrorKind): boolean {
  return kind !== 'local_resources'
}

/** The client-facing error for a failed upstream request: 504 for timeouts, 503 when the gateway itself is out of resources, 502 otherwise. */
export function clientError (kind: UpstreamErrorKind, cause: unknown): Error {
  if (kind === 'local_resources') return new GatewayOverloadedError({ cause })
  return kind.endsWith('_timeout') ? new UpstreamTimeoutError({ cause }) : new UpstreamUnavailableError({ cause })
}

/** Keep-alive pools, one per upstream origin and timeout set; closed with the app. */
export class UpstreamPools {
  readonly #pools = new Map<string, Pool>()

  get (upstream: string, t: Timeouts): Pool {
    const origin = new URL(upstream).origin
    const key = `${origin}|${t.connect}|${t.headers}|${t.body}`
    let pool = this.#pools.get(key)
    if (pool === undefined) {
      pool = new Pool(origin, {
        connections: DEFAULT_POOL_CONNECTIONS,
        pipelining: 1,
        keepAliveTimeout: DEFAULT_KEEP_ALIVE,
        connect: { timeout: t.connect * 1000 },
        headersTimeout: t.headers * 1000,
        bodyTimeout: t.body * 1000
      })
      this.#pools.set(key, pool)
    }
    return pool
  }

  /** Closes, once their requests are done, the pools not in `keep` (upstreams a reload removed or whose timeouts changed). */
  async retain (keep: Set<Pool>): Promise<void> {
    const gone = [...this.#pools].filter(([, p]) => !keep.has(p))
    for (const [key] of gone) this.#pools.delete(key)
    await Promise.all(gone.map(async ([, p]) => { await p.close() }))
  }

  /** The pools held (for reporting). */
  get size (): number {
    return this.#pools.size
  }

  async close (): Promise<void> {
    const pools = [...this.#pools.values()]
    this.#pools.clear()
    await Promise.all(pools.map(async (p) => { await p.destroy() }))
  }
}
