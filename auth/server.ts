import Fastify, { type FastifyBaseLogger, type FastifyInstance, type FastifyServerOptions } from 'fastify'
import { requestIdOf } from '@portcullis/core'
import { MemoryStore, RedisStore, createRedisClient, type RateLimitStore } from '@portcullis/rate-limit'
import { ConfigError } from '../lib/errors.js'
import { admin } from '@portcullis/metrics'
import metrics, { type Registry } from '@portcullis/metrics'
import type { Db } from '../store/db.js'
import type { ClientStore } from '../store/clients.js'
import type { RefreshStore } from '../store/refresh.js'
import type { UserStore } from '../store/users.js'
import type { AuthConfig } from './config.js'
import type { AuthContext } from './context.js'
import { installErrorHandling } from './http-errors.js'
import { createAuthMetrics, type AuthMetrics } from './metrics.js'
import login from './routes/login.js'
import refresh from './routes/refresh.js'
import token from './routes/token.js'
import wellKnown from './routes/well-known.js'
import { Signer, type KeySource } from './signer.js'

/** Expired refresh-token families are deleted this often, ms. */
export const PRUNE_INTERVAL = 60 * 60 * 1000

export interface AuthServiceOptions {
  config: AuthConfig
  /** The store (for readiness). */
  db: Db
  /** Signing keys and the JWKS (store/keys.ts `KeyStore`). */
  keys: KeySource
  users: UserStore
  clients: ClientStore
  refresh: RefreshStore
  /** Clock in epoch ms for token times. @defaultValue Date.now */
  now?: () => number
  /** Fastify logger options (both listeners). @defaultValue false */
  logger?: FastifyServerOptions['logger']
  /** A logger instance instead of `logger`. */
  loggerInstance?: FastifyBaseLogger
  /** Process metrics (CPU, memory, event loop) on /metrics. @defaultValue true */
  defaultMetrics?: boolean
}

export interface AuthService {
  /** The public app (not listening yet). */
  app: FastifyInstance
  /** The admin app: /health/live, /health/ready, /metrics (not listening yet). */
  admin: FastifyInstance
  signer: Signer
  metrics: AuthMetrics
  registry: Registry
  /** Closes both apps and stops the signer; idempotent. The stores stay open (the caller owns them). */
  close(): Promise<void>
}

/** Keys the login counters keep in memory when there is no Redis (least recently used forgotten first). */
const LOGIN_COUNTER_KEYS = 5000
/** Milliseconds a login-counter command may take before the login is refused with 503. */
const LOGIN_COUNTER_TIMEOUT = 1000
/** Prefix of the login counters' Redis keys: `portcullis-auth-login:ip:<ip>`, `...:user:<name>`. */
export const LOGIN_COUNTER_PREFIX = 'portcullis-auth-login:'

/**
 * Where login attempts are counted: this process, or Redis when REDIS_URL is set, so every replica
 * counts the same attempts. Redis is connected at boot (an unreachable Redis fails the boot); later
 * failures refuse logins with 503 rather than let guesses through uncounted.
 */
async function loginCounterStore (app: FastifyInstance, url: string | undefined): Promise<RateLimitStore> {
  if (url === undefined) return new MemoryStore(LOGIN_COUNTER_KEYS)
  const redis = await createRedisClient(url, { commandTimeout: LOGIN_COUNTER_TIMEOUT })
  try {
    await redis.connect()
  } catch (err) {
    redis.disconnect()
    throw new ConfigError('REDIS_URL', `Redis not reachable: ${(err as Error).message}`)
  }
  app.addHook('onClose', async () => { redis.disconnect() })
  return new RedisStore(redis, LOGIN_COUNTER_PREFIX)
}

/**
 * Builds the auth service: the public app (login, refresh, logout, /oauth/token, JWKS, discovery)
 * and its admin app. Reads the key store once before returning (throws when it cannot).
 */
export async function buildAuthService (opts: AuthServiceOptions): Promise<AuthService> {
  const cfg = opts.config
  const log = opts.loggerInstance !== undefined ? { loggerInstance: opts.loggerInstance } : { logger: opts.logger ?? false }
  const app = Fastify({
    ...log,
    bodyLimit: cfg.bodyLimit,
    trustProxy: cfg.trustProxy,
    // the caller's request id by the rule every Portcullis process applies (@portcullis/core)
    requestIdHeader: false,
    genReqId: (req) => requestIdOf(req.headers),
    return503OnClosing: true,
    // No type coercion: `{"username": 123}` is a 400, not the string "123".
    ajv: { customOptions: { coerceTypes: false } }
  })
  // Anything failing after this point (Redis, the key store) closes what was opened so far.
  try {
    // Only JSON (and form bodies on /oauth/token): a text/plain body is a 400, not a string to validate.
    app.removeContentTypeParser('text/plain')
    await app.register(metrics, { defaultMetrics: opts.defaultMetrics ?? true })
    const m = createAuthMetrics(app.metricsRegistry)
    const loginCounters = await loginCounterStore(app, cfg.redisUrl)
    installErrorHandling(app, cfg.bodyLimit)

    const signer = new Signer({
      keys: opts.keys,
      pollInterval: cfg.keyPollInterval,
      maxStaleness: cfg.keyMaxStaleness,
      log: app.log.child({ component: 'signer' }),
      onKeyChange: () => m.keyChanges.inc(),
      onRefreshError: () => m.keyReadFailures.inc()
    })
    const ctx: AuthContext = {
      config: cfg,
      users: opts.users,
      clients: opts.clients,
      refresh: opts.refresh,
      signer,
      metrics: m,
      loginCounters,
      now: opts.now ?? Date.now
    }
    await app.register(login, ctx)
    await app.register(refresh, ctx)
    await app.register(token, ctx)
    await app.register(wellKnown, ctx)

    const prune = setInterval(() => {
      opts.refresh.prune().then((n) => {
        if (n > 0) app.log.info({ families: n }, 'pruned expired refresh-token families')
      }, (err: unknown) => app.log.warn({ err }, 'refresh-token prune failed'))
    }, PRUNE_INTERVAL)
    prune.unref()
    app.addHook('onClose', async () => {
      clearInterval(prune)
      signer.stop()
    })

    await signer.start()

    const adminApp = Fastify({ ...log })
    await adminApp.register(admin, {
      registries: [app.metricsRegistry],
      ready: async () => {
        await opts.db.query('SELECT 1')
        return signer.ready ? true : 'no usable signing key (none is active, or the key store could not be read lately)'
      }
    })

    let closing: Promise<void> | undefined
    return {
      app,
      admin: adminApp,
      signer,
      metrics: m,
      registry: app.metricsRegistry,
      close: () => {
        closing ??= (async () => {
          await adminApp.close()
          await app.close()
        })()
        return closing
      }
    }
  } catch (err) {
    await app.close().catch(() => {})
    throw err
  }
}
