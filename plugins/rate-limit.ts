import { createRequire } from 'node:module'
import fp from 'fastify-plugin'
import createError from '@fastify/error'
import fastifyRateLimit, { normalizeIP, type FastifyRateLimitStore } from '@fastify/rate-limit'
import { Redis } from 'ioredis'
import type { FastifyInstance, FastifyPluginAsync, FastifyReply, FastifyRequest, onRequestHookHandler, preHandlerHookHandler, onResponseHookHandler } from 'fastify'
import { promClient, type Registry } from './metrics.js'

export const DEFAULT_MAX = 100
export const DEFAULT_TIME_WINDOW = 60_000 // ms
export const DEFAULT_LOCAL_CACHE = 10_000 // keys kept by the in-memory store (LRU)
export const DEFAULT_REDIS_COMMAND_TIMEOUT = 500 // ms: a slow Redis must not hold requests
const STORE_WARN_INTERVAL = 10_000 // ms between two "store failed" warnings

export const RateLimitedError = createError('PORTCULLIS_RATE_LIMITED', 'Rate limit exceeded, retry in %s seconds', 429)
export const RateLimitStoreError = createError('PORTCULLIS_RATE_LIMIT_STORE', 'Rate limiting is unavailable', 503)

export interface RateLimitPluginOptions {
  /** Requests per window for routes without their own `config.rateLimit`. @defaultValue 100 */
  max?: number
  /** Window in ms (or an `@lukeed/ms` string such as `'1 minute'`). @defaultValue 60000 */
  timeWindow?: number | string
  /** Apply the default budget to every route (a route opts out with `config: { rateLimit: false }`). @defaultValue true */
  global?: boolean
  /**
   * Shared store: an ioredis client (the caller closes it) or a `redis://` URL (the plugin connects
   * and closes). Unset: an in-memory store per process. @defaultValue undefined
   */
  redis?: Redis | string
  /** When the store fails: `false` lets requests through (fail open), `true` answers 503. @defaultValue false */
  failClosed?: boolean
  /** Key namespace in Redis. @defaultValue 'portcullis-rl:' */
  nameSpace?: string
  /** Metrics registry. @defaultValue app.metricsRegistry when the metrics plugin is registered */
  registry?: Registry
}

// The stores are not exported by @fastify/rate-limit's entry point; they are plain CommonJS files.
const require = createRequire(import.meta.url)
type StoreCtor = new (...args: unknown[]) => FastifyRateLimitStore
const RedisStore = require('@fastify/rate-limit/store/RedisStore') as StoreCtor
const LocalStore = require('@fastify/rate-limit/store/LocalStore') as StoreCtor

type CheckFn = ReturnType<FastifyInstance['createRateLimit']>
interface Limiter { label: string, check: CheckFn }

const kCounted = Symbol('portcullis.rateLimit.counted')
declare module 'fastify' {
  interface FastifyRequest { [kCounted]?: boolean }
}

function counter (registry: Registry | undefined, name: string, help: string, labelNames: string[]): promClient.Counter<string> | undefined {
  if (registry === undefined) return undefined
  const existing = registry.getSingleMetric(name)
  if (existing !== undefined) return existing as promClient.Counter<string>
  return new promClient.Counter({ name, help, labelNames, registers: [registry] })
}

/**
 * Rate limiting on @fastify/rate-limit's stores (in-memory LRU or one Redis Lua script per hit).
 * Key = the verified token's `sub` when `request.user` is set (so register it after the auth plugin's
 * hooks run: the check is a route-level preHandler), else the client IP. A request refused with 401
 * before the check is counted against its IP afterwards, and an IP over budget is refused (429) before
 * its next token is even verified: token guessing is rate limited. Headers: `RateLimit-Limit`,
 * `RateLimit-Remaining`, `RateLimit-Reset`, and `Retry-After` on 429.
 */
const rateLimit: FastifyPluginAsync<RateLimitPluginOptions> = async (app, opts) => {
  validateOptions(opts)
  const failClosed = opts.failClosed ?? false
  const registry = opts.registry ?? (app.hasDecorator('metricsRegistry') ? app.metricsRegistry : undefined)
  const rejections = counter(registry, 'portcullis_rate_limit_rejections_total', 'Requests refused with 429 by the rate limiter', ['route'])
  const storeErrors = counter(registry, 'portcullis_rate_limit_store_errors_total', 'Rate-limit store failures (requests then pass when failing open, or get 503 when failing closed)', [])

  let redis: Redis | undefined
  if (typeof opts.redis === 'string') {
    redis = new Redis(opts.redis, {
      enableOfflineQueue: false, // fail at once while disconnected instead of queueing requests
      maxRetriesPerRequest: 0,
      commandTimeout: DEFAULT_REDIS_COMMAND_TIMEOUT,
      connectTimeout: 2000,
      lazyConnect: true,
      retryStrategy: (times) => Math.min(times * 200, 2000)
    })
    redis.on('error', () => {}) // failures surface per command, counted and logged below
    const own = redis
    app.addHook('onClose', async () => { own.disconnect() })
    await own.connect().catch((err: Error) => {
      app.log.warn({ err: err.message }, 'rate-limit store: Redis not reachable at start; retrying in the background')
    })
  } else {
    redis = opts.redis
  }

  let lastWarn = 0
  const storeFailed = (err: Error): void => {
    storeErrors?.inc()
    const now = Date.now()
    if (now - lastWarn >= STORE_WARN_INTERVAL) {
      lastWarn = now
      app.log.warn({ err: err.message, failClosed }, 'rate-limit store failed: requests are %s', failClosed ? 'refused (503)' : 'let through')
    }
  }
  const wrap = (inner: FastifyRateLimitStore): FastifyRateLimitStore => ({
    incr (key, cb, timeWindow, max) {
      try {
        inner.incr(key, (err, res) => {
          if (err !== null) storeFailed(err)
          cb(err, res)
        }, timeWindow, max)
      } catch (err) {
        storeFailed(err as Error)
        cb(err as Error)
      }
    },
    // every limiter's keys already start with its label: one store (one LRU, one Redis key space
    // `portcullis-rl:<label>|<identity>`) serves them all
    child: () => wrap(inner)
  })
  const root = redis === undefined
    ? new LocalStore(false, false, DEFAULT_LOCAL_CACHE)
    : new RedisStore(false, false, redis, opts.nameSpace ?? 'portcullis-rl:')
  const store = wrap(root)

  // @fastify/rate-limit lives in a child context so its own onRoute hook never touches our routes:
  // only its stores and `createRateLimit` are used.
  let create: FastifyInstance['createRateLimit'] | undefined
  await app.register(async (child) => {
    await child.register(fastifyRateLimit, {
      global: false,
      max: opts.max ?? DEFAULT_MAX,
      timeWindow: opts.timeWindow ?? DEFAULT_TIME_WINDOW,
      skipOnError: false,
      store: function Store () { return store } as unknown as never,
      keyGenerator: identityKey
    })
    create = child.createRateLimit.bind(child)
  })

  const limiters = new Map<string, Limiter>()
  const limiterFor = (label: string, cfg?: { max?: unknown, timeWindow?: unknown }): Limiter => {
    let l = limiters.get(label)
    if (l === undefined) {
      const scoped = { keyGenerator: (req: FastifyRequest) => `${label}|${identityKey(req)}` } as Parameters<FastifyInstance['createRateLimit']>[0]
      l = { label, check: create!(cfg === undefined ? scoped : { ...scoped, ...cfg } as typeof scoped) }
      limiters.set(label, l)
    }
    return l
  }
  const globalLimiter = limiterFor('*', { max: opts.max ?? DEFAULT_MAX, timeWindow: opts.timeWindow ?? DEFAULT_TIME_WINDOW })

  // IPs whose budget was used up by 401s, until when (epoch ms). Local to this process: each
  // replica learns it from the shared counter on the first 401 it sees past the limit.
  const blocked = new Map<string, number>()
  const BLOCKED_MAX = 100_000

  const guard: onRequestHookHandler = async (request, reply) => {
    if (blocked.size === 0) return
    const ip = clientIp(request)
    const until = blocked.get(ip)
    if (until === undefined) return
    const left = until - Date.now()
    if (left <= 0) {
      blocked.delete(ip)
      return
    }
    rejections?.inc({ route: request.routeOptions.url ?? 'unknown' })
    const secs = Math.ceil(left / 1000)
    reply.header('retry-after', secs)
    throw new RateLimitedError(String(secs))
  }
  app.addHook('onRequest', guard)

  const limitHook = (limiter: Limiter): preHandlerHookHandler => async function rateLimitCheck (request, reply) {
    request[kCounted] = true
    let r: Awaited<ReturnType<CheckFn>>
    try {
      r = await limiter.check(request)
    } catch (err) {
      if (failClosed) throw new RateLimitStoreError({ cause: err })
      return
    }
    if (r.isAllowed) return
    setHeaders(reply, r.max, r.remaining, r.ttlInSeconds)
    if (r.isExceeded) {
      rejections?.inc({ route: limiter.label })
      reply.header('retry-after', r.ttlInSeconds)
      throw new RateLimitedError(String(r.ttlInSeconds))
    }
  }

  const count401 = (limiter: Limiter): onResponseHookHandler => async function rateLimitCount401 (request, reply) {
    if (reply.statusCode !== 401 || request[kCounted] === true) return
    try {
      const r = await limiter.check(request) // request.user is unset: the key is the IP
      if (!r.isAllowed && r.isExceeded) {
        if (blocked.size >= BLOCKED_MAX) blocked.delete(blocked.keys().next().value!)
        blocked.set(clientIp(request), Date.now() + r.ttl)
      }
    } catch {
      // counted and logged by the store wrapper
    }
  }

  app.addHook('onRoute', (route) => {
    const cfg = route.config?.rateLimit
    if (cfg === false) return
    if (cfg === undefined && opts.global === false) return
    const limiter = cfg === undefined ? globalLimiter : limiterFor(cfg.groupId ?? route.url, cfg)
    // Route-level hooks run after every instance-level hook of the same kind, so the check sees
    // `request.user` whichever hook the auth plugin verifies in; it runs before the route's own
    // preHandlers (e.g. the gateway's circuit breaker).
    route.preHandler = [limitHook(limiter), ...toArray(route.preHandler)]
    route.onResponse = [...toArray(route.onResponse), count401(limiter)]
  })
}

/** One clear message per bad option, at registration (never on the first request). */
function validateOptions (opts: RateLimitPluginOptions): void {
  if (opts.max !== undefined && (!Number.isInteger(opts.max) || opts.max < 0)) {
    throw new Error(`rate-limit plugin: option "max" must be a non-negative integer, got ${String(opts.max)}`)
  }
  if (opts.timeWindow !== undefined && !(typeof opts.timeWindow === 'string' || (Number.isFinite(opts.timeWindow) && opts.timeWindow > 0))) {
    throw new Error(`rate-limit plugin: option "timeWindow" must be a positive number of ms or a duration string, got ${String(opts.timeWindow)}`)
  }
  if (typeof opts.redis === 'string' && !/^rediss?:\/\//.test(opts.redis)) {
    throw new Error('rate-limit plugin: option "redis" must be a redis:// or rediss:// URL or an ioredis client')
  }
}

function toArray<T> (h: T | T[] | undefined): T[] {
  return h === undefined ? [] : Array.isArray(h) ? h : [h]
}

function clientIp (request: FastifyRequest): string {
  return normalizeIP(request.ip)
}

/** `s:<sub>` for a verified caller, else `ip:<client ip>` (IPv6 grouped by /64). */
function identityKey (request: FastifyRequest): string {
  const user = (request as { user?: { sub?: unknown } | null }).user
  return user !== null && user !== undefined && typeof user.sub === 'string' ? `s:${user.sub}` : `ip:${clientIp(request)}`
}

function setHeaders (reply: FastifyReply, max: number, remaining: number, reset: number): void {
  reply.header('ratelimit-limit', max)
  reply.header('ratelimit-remaining', remaining)
  reply.header('ratelimit-reset', reset)
}

export default fp(rateLimit, { fastify: '5.x', name: 'portcullis-rate-limit' })
