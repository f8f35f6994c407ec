/**
 * What the stores and plugins need of a Redis client: ioredis' `Redis` (or `Cluster`) satisfies it.
 * Declared here so that the package's types do not require ioredis to be installed.
 */
export interface RedisClient {
  defineCommand (name: string, definition: { numberOfKeys?: number, lua: string }): void
  connect (): Promise<void>
  disconnect (): void
  on (event: 'error', listener: (err: Error) => void): unknown
}

/** One hit's outcome: hits so far in the current window, and milliseconds until it ends. */
export interface Hit { current: number, ttl: number }

/**
 * Where hit counts live. Fixed windows: the first hit of a key starts its window, every hit adds
 * one, and the count starts again once the window has passed.
 */
export interface RateLimitStore {
  incr (key: string, timeWindow: number, cb: (err: Error | null, hit?: Hit) => void): void
}

/** A window as the whole number of milliseconds Redis accepts (at least 1). */
export function windowMs (timeWindow: number): number {
  return Math.max(1, Math.round(timeWindow))
}

/** In-process counts, the least recently hit keys dropped beyond `maxKeys` (one process's view only). */
export class MemoryStore implements RateLimitStore {
  #keys = new Map<string, { count: number, start: number }>()
  #max: number
  #now: () => number

  constructor (maxKeys: number, now: () => number = Date.now) {
    this.#max = maxKeys
    this.#now = now
  }

  incr (key: string, timeWindow: number, cb: (err: Error | null, hit?: Hit) => void): void {
    const now = this.#now()
    let e = this.#keys.get(key)
    if (e !== undefined) {
      this.#keys.delete(key) // re-inserted below: Map order is recency order
      if (e.start + timeWindow <= now) e = { count: 0, start: now } // its window is over: a new one
    } else {
      e = { count: 0, start: now }
      // only a new key makes room, by forgetting the least recently hit one
      if (this.#keys.size >= this.#max) this.#keys.delete(this.#keys.keys().next().value!)
    }
    e.count++
    this.#keys.set(key, e)
    cb(null, { current: e.count, ttl: e.start + timeWindow - now })
  }
}

// INCR and PEXPIRE in one script, so a key can never be left without an expiry; the window's
// remaining time comes back with the count.
const INCR_SCRIPT = `
local current = redis.call('INCR', KEYS[1])
local ttl = tonumber(ARGV[1])
if current == 1 then
  redis.call('PEXPIRE', KEYS[1], ttl)
else
  ttl = redis.call('PTTL', KEYS[1])
  if ttl < 0 then
    ttl = tonumber(ARGV[1])
    redis.call('PEXPIRE', KEYS[1], ttl)
  end
end
return {current, ttl}
`

/** A Redis command that did not answer within the store's `commandTimeout`. */
export class RedisCommandTimeoutError extends Error {
  constructor (ms: number) {
    super(`rate-limit store: Redis did not answer within ${ms} ms`)
    this.name = 'RedisCommandTimeoutError'
  }
}

/**
 * Counts shared by every process on one Redis: one script call (EVALSHA) per hit.
 *
 * With `commandTimeout`, a hit fails after that many milliseconds without an answer. The store keeps
 * that time itself rather than through the client's own command timeout: when the timer fires, the
 * verdict waits for the I/O poll that follows (setImmediate), so an answer that reached the socket
 * while the event loop was busy (a GC pause, a slow request) is read first. A client-side timer
 * would fail every command in flight during such a stall, and a few of those in a row would bypass
 * a healthy Redis.
 */
export class RedisStore implements RateLimitStore {
  #redis: RedisClient
  #prefix: string
  #timeout: number | undefined

  constructor (redis: RedisClient, prefix: string, opts: { commandTimeout?: number } = {}) {
    this.#redis = redis
    this.#prefix = prefix
    this.#timeout = opts.commandTimeout
    if (typeof (redis as unknown as { portcullisRateLimit?: unknown }).portcullisRateLimit !== 'function') {
      redis.defineCommand('portcullisRateLimit', { numberOfKeys: 1, lua: INCR_SCRIPT })
    }
  }

  incr (key: string, timeWindow: number, cb: (err: Error | null, hit?: Hit) => void): void {
    const r = this.#redis as unknown as { portcullisRateLimit: (key: string, ttl: number) => Promise<[number, number]> }
    // PEXPIRE takes whole milliseconds: 1.1h * 1000 is 3960000.0000000005, which Redis refuses
    const reply = r.portcullisRateLimit(this.#prefix + key, windowMs(timeWindow))
    const ms = this.#timeout
    if (ms === undefined) {
      reply.then((res) => { cb(null, { current: Number(res[0]), ttl: Number(res[1]) }) }, (err: Error) => { cb(err) })
      return
    }
    let settled = false
    const timer = setTimeout(() => {
      setImmediate(() => {
        if (settled) return
        settled = true
        cb(new RedisCommandTimeoutError(ms))
      })
    }, ms)
    reply.then(
      (res) => {
        if (settled) return
        settled = true
        clearTimeout(timer)
        cb(null, { current: Number(res[0]), ttl: Number(res[1]) })
      },
      (err: Error) => {
        if (settled) return
        settled = true
        clearTimeout(timer)
        cb(err)
      }
    )
  }
}

/** Consecutive failures after which a store is bypassed. */
export const DEFAULT_STORE_FAILURE_THRESHOLD = 5
/** Milliseconds a failing store is bypassed before one request tries it again. */
export const DEFAULT_STORE_RETRY_AFTER = 5000

/**
 * A store that stops calling a failing one: after `threshold` failures in a row, every hit fails at
 * once (no command, no wait) for `retryAfter` ms; then one hit tries the store again, and its success
 * ends the bypass. A hung Redis thus costs each request at most its command timeout until the bypass
 * starts, and nothing after; the plugin's failOpen/failClosed policy decides what a failed hit means.
 */
export class BypassingStore implements RateLimitStore {
  #store: RateLimitStore
  #threshold: number
  #retryAfter: number
  #now: () => number
  #failures = 0
  #openUntil = 0
  #probing = false

  constructor (store: RateLimitStore, threshold = DEFAULT_STORE_FAILURE_THRESHOLD, retryAfter = DEFAULT_STORE_RETRY_AFTER, now: () => number = Date.now) {
    this.#store = store
    this.#threshold = threshold
    this.#retryAfter = retryAfter
    this.#now = now
  }

  /** True while hits skip the store. */
  get bypassed (): boolean {
    return this.#failures >= this.#threshold && (this.#now() < this.#openUntil || this.#probing)
  }

  incr (key: string, timeWindow: number, cb: (err: Error | null, hit?: Hit) => void): void {
    if (this.bypassed) {
      cb(new Error('rate-limit store bypassed after repeated failures'))
      return
    }
    // past the bypass, this hit is the one that tries the store again
    if (this.#failures >= this.#threshold) this.#probing = true
    this.#store.incr(key, timeWindow, (err, hit) => {
      this.#probing = false
      if (err !== null) {
        this.#failures++
        if (this.#failures >= this.#threshold) this.#openUntil = this.#now() + this.#retryAfter
      } else {
        this.#failures = 0
      }
      cb(err, hit)
    })
  }
}
