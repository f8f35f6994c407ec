import Fastify, { type FastifyBaseLogger, type FastifyInstance, type FastifyServerOptions } from 'fastify'
import { requestIdOf } from '@portcullis/core'
import { Redis } from 'ioredis'
import { MemoryStore, RedisStore, createRedisClient, type RateLimitStore } from '@portcullis/rate-limit'
import { DrainState, DRAINING_REASON } from '../lib/drain.js'
import { ConfigError } from '../lib/errors.js'
import { admin } from '@portcullis/metrics'
import metrics, { type Registry } from '@portcullis/metrics'
import type { Db } from '../store/db.js'
import { isStoreUnavailable } from '../store/db-errors.js'
import type { KeyRecord } from '../store/key-records.js'
import type { ClientStore } from '../store/clients.js'
import { openRevocationStore, REVOCATIONS_CHANNEL, type RevocationStore } from '../store/revocations.js'
import { RedisRevocationRelay, RevocationHub, revocationFeedRoute } from './revocations.js'
import type { RefreshStore } from '../store/refresh.js'
import type { UserStore } from '../store/users.js'
import type { AuthConfig } from './config.js'
import type { AuthContext } from './context.js'
import { installErrorHandling, STORE_UNAVAILABLE } from './http-errors.js'
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
  /** Signing keys, the JWKS and the key timeline of the admin `GET /keys` (store/keys.ts `KeyStore`). */
  keys: KeySource & KeyTimelineSource
  users: UserStore
  clients: ClientStore
  refresh: RefreshStore
  /** Where revocations are recorded. @defaultValue the revocations table of `db` */
  revocations?: RevocationStore
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
  /** The admin app: /health/live, /health/ready, /metrics, /keys (not listening yet). */
  admin: FastifyInstance
  signer: Signer
  metrics: AuthMetrics
  registry: Registry
  /** Started on SIGTERM: `/health/ready` answers 503 from then on, the public app still serves. */
  drain: DrainState
  /** Closes the public app (in-flight requests finish), then the admin app, and stops the signer; idempotent. The stores stay open (the caller owns them). */
  close(): Promise<void>
  /** Revocations: recorded, and pushed to the feeds (`listening`: announced by PostgreSQL NOTIFY). */
  revocations: RevocationHub
}

/** What the admin `GET /keys` reads, at each request: every stored key (store/keys.ts `KeyStore.list`). */
export interface KeyTimelineSource {
  list(): Promise<KeyRecord[]>
}

/** One key of the admin `GET /keys`: its state and timeline (ISO 8601 or null), never key material. */
export interface KeyTimelineEntry {
  kid: string
  state: KeyRecord['state']
  keySize: number
  createdAt: string
  activatesAt: string | null
  activatedAt: string | null
  retiredAt: string | null
  revokedAt: string | null
}

const iso = (ms: number | null): string | null => ms === null ? null : new Date(ms).toISOString()

/** The public view of a key record: the members below are copied one by one, so no key material can follow. */
export function keyTimelineEntry (r: KeyRecord): KeyTimelineEntry {
  return {
    kid: r.kid,
    state: r.state,
    keySize: r.keySize,
    createdAt: new Date(r.createdAt).toISOString(),
    activatesAt: iso(r.activatesAt),
    activatedAt: iso(r.activatedAt),
    retiredAt: iso(r.retiredAt),
    revokedAt: iso(r.revokedAt)
  }
}

/**
 * `GET /keys` on the admin app: every key's state and timeline, read from the store at each request,
 * oldest first. A failed read is a 503 `{ statusCode, code, error, message }` (an outage says only
 * that the store is unavailable, as the public listener does, and carries `Retry-After`), logged once.
 */
function keyTimelineRoute (adminApp: FastifyInstance, keys: KeyTimelineSource): void {
  adminApp.get('/keys', { logLevel: 'warn' }, async (req, reply) => {
    let records: KeyRecord[]
    try {
      records = await keys.list()
    } catch (err) {
      const outage = isStoreUnavailable(err)
      const errCode = (err as { code?: unknown } | null)?.code
      const reason = err instanceof Error ? err.message : String(err)
      const code = outage ? 'PORTCULLIS_STORE_UNAVAILABLE' : errCode === 'PORTCULLIS_KEY_CORRUPT' ? 'PORTCULLIS_KEY_CORRUPT' : 'PORTCULLIS_KEY_STORE_ERROR'
      // an outage says nothing about the store (as on the public listener); a corrupt row's message
      // names the kid and what is wrong with it, never key material
      const message = outage ? STORE_UNAVAILABLE : code === 'PORTCULLIS_KEY_CORRUPT' ? reason : 'the key store could not be read'
      req.log.error({ event: outage ? 'store_unavailable' : 'key_store_read_failed', code: errCode, reason }, 'GET /keys: answered 503')
      if (outage) reply.header('retry-after', '1')
      return reply.code(503).header('cache-control', 'no-store')
        .send({ statusCode: 503, code, error: 'Service Unavailable', message })
    }
    const sorted = [...records].sort((a, b) => a.createdAt - b.createdAt || (a.kid < b.kid ? -1 : a.kid > b.kid ? 1 : 0))
    return reply.header('cache-control', 'no-store').send({ keys: sorted.map(keyTimelineEntry) })
  })
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
 * With REDIS_URL, revocations are also published to Redis for verifiers that take them from there
 * (RedisRevocationRelay). A connection of its own: the login counters' commands time out at 1 s and
 * must not queue behind a relay's catch-up.
 */
async function relayRevocations (app: FastifyInstance, hub: RevocationHub, url: string, issuer: string): Promise<void> {
  const redis = new Redis(url, {
    lazyConnect: true,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    connectTimeout: 2000,
    commandTimeout: 5000,
    retryStrategy: (times: number) => Math.min(times * 200, 2000)
  })
  redis.on('error', () => {})
  try {
    await redis.connect()
  } catch (err) {
    redis.disconnect()
    throw new ConfigError('REDIS_URL', `Redis not reachable: ${(err as Error).message}`)
  }
  let failing = false
  const relay = new RedisRevocationRelay(redis, hub, issuer, {
    onError: (err) => {
      if (!failing) app.log.warn({ err }, 'revocations: Redis could not be written; trying again')
      failing = true
    }
  })
  app.addHook('onClose', async () => { relay.stop(); redis.disconnect() })
  await relay.start()
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
    const hub = new RevocationHub(opts.revocations ?? await openRevocationStore(opts.db), (err) => {
      app.log.warn({ err }, 'revocations: the store could not be read')
    })
    await hub.start(opts.db.listen === undefined ? undefined : (fn) => opts.db.listen!(REVOCATIONS_CHANNEL, fn))
    if (cfg.redisUrl !== undefined) await relayRevocations(app, hub, cfg.redisUrl, cfg.issuer)
    // a key revoked by the CLI: read the keys again at once rather than at the next poll, so this
    // service stops signing with it within the hub's poll (its tokens are refused everywhere now)
    hub.subscribe((events) => {
      if (events.some((e) => e.kind === 'kid')) void signer.refresh()
    })
    const ctx: AuthContext = {
      revocations: hub,
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
    revocationFeedRoute(app, hub)

    const prune = setInterval(() => {
      opts.refresh.prune().then((n) => {
        if (n > 0) app.log.info({ families: n }, 'pruned expired refresh-token families')
      }, (err: unknown) => app.log.warn({ err }, 'refresh-token prune failed'))
      hub.store.prune().then((n) => {
        if (n > 0) app.log.info({ revocations: n }, 'pruned revocations no token can match any more')
      }, (err: unknown) => app.log.warn({ err }, 'revocation prune failed'))
    }, PRUNE_INTERVAL)
    prune.unref()
    app.addHook('onClose', async () => {
      clearInterval(prune)
      signer.stop()
      await hub.stop()
    })

    await signer.start()

    const drain = new DrainState()
    const adminApp = Fastify({ ...log })
    await adminApp.register(admin, {
      registries: [app.metricsRegistry],
      ready: async () => {
        if (drain.draining) return DRAINING_REASON
        await opts.db.query('SELECT 1')
        return signer.ready ? true : 'no usable signing key (none is active, or the key store could not be read lately)'
      }
    })
    keyTimelineRoute(adminApp, opts.keys)

    let closing: Promise<void> | undefined
    return {
      app,
      admin: adminApp,
      signer,
      revocations: hub,
      metrics: m,
      registry: app.metricsRegistry,
      drain,
      close: () => {
        drain.start()
        closing ??= (async () => {
          // The admin listener last: probes see 503 (not a refused connection) until the public one is closed.
          try {
            await app.close()
          } finally {
            await adminApp.close()
          }
        })()
        return closing
      }
    }
  } catch (err) {
    await app.close().catch(() => {})
    throw err
  }
}
