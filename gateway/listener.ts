import { readFileSync } from 'node:fs'
import { ConfigError } from '../lib/errors.js'
import type { GatewayConfig } from './config.js'

/**
 * Limits of the public listener, in seconds (and a connection count), as nginx and HAProxy have
 * them: without them a client that connects and sends nothing holds a socket forever, and enough of
 * them exhaust the gateway's file descriptors.
 */
export interface ListenerLimits {
  /** A connection with no traffic either way for this long is closed (before a request, between requests, during one). */
  idleTimeout: number
  /** An idle keep-alive connection is closed this long after its last response. */
  keepAliveTimeout: number
  /** The request's headers must have arrived this long after it began (slow-header clients). */
  headersTimeout: number
  /** The whole request, body included, must have arrived this long after it began. */
  requestTimeout: number
  /** Open connections at most; more are closed as they arrive. */
  maxConnections: number
}

export const DEFAULT_IDLE_TIMEOUT = 60
/** Above the 60 s idle timeout of common load balancers, so the gateway never closes first under one. */
export const DEFAULT_KEEP_ALIVE_TIMEOUT = 72
export const DEFAULT_HEADERS_TIMEOUT = 10
export const DEFAULT_REQUEST_TIMEOUT = 120
/** File descriptors kept back from the connection cap for upstream sockets, the store, logs and the admin listener. */
const RESERVED_FDS = 256
const FALLBACK_MAX_CONNECTIONS = 4096

/**
 * The default connection cap: the process's open-file limit (Linux: /proc/self/limits) less a
 * reserve for the gateway's own upstream connections and files, so accepted clients can never
 * starve the gateway of the descriptors it needs to reach its upstreams.
 */
export function defaultMaxConnections (limitsFile = '/proc/self/limits'): number {
  try {
    const m = /^Max open files\s+(\d+|unlimited)/m.exec(readFileSync(limitsFile, 'utf8'))
    if (m === null || m[1] === 'unlimited') return FALLBACK_MAX_CONNECTIONS
    return Math.max(64, Number(m[1]) - RESERVED_FDS)
  } catch {
    return FALLBACK_MAX_CONNECTIONS
  }
}

export function defaultListenerLimits (): ListenerLimits {
  return {
    idleTimeout: DEFAULT_IDLE_TIMEOUT,
    keepAliveTimeout: DEFAULT_KEEP_ALIVE_TIMEOUT,
    headersTimeout: DEFAULT_HEADERS_TIMEOUT,
    requestTimeout: DEFAULT_REQUEST_TIMEOUT,
    maxConnections: defaultMaxConnections()
  }
}

/**
 * Boot checks that the limits fit together and with the route file: a request must be able to
 * outlast its headers timeout, and a client waiting for a slow upstream must not be cut off as idle
 * before the route's own timeouts answer it with a 504.
 */
export function checkListenerLimits (l: ListenerLimits, config: GatewayConfig): void {
  if (l.requestTimeout !== 0 && l.requestTimeout < l.headersTimeout) {
    throw new ConfigError('GATEWAY_REQUEST_TIMEOUT', `must be 0 (none) or >= GATEWAY_HEADERS_TIMEOUT (${l.headersTimeout}s), got ${l.requestTimeout}s`)
  }
  const slowest = config.routes.reduce((m, r) => Math.max(m, r.timeouts.headers, r.timeouts.body), 0)
  if (l.idleTimeout !== 0 && l.idleTimeout <= slowest) {
    throw new ConfigError('GATEWAY_IDLE_TIMEOUT', `must be 0 (none) or longer than every route's headers and body timeout (the longest is ${slowest}s), got ${l.idleTimeout}s`)
  }
}
