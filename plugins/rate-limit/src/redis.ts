import type { RedisClient } from './stores.js'

/** The ioredis options redisClientOptions sets (a subset of ioredis' RedisOptions). */
export interface RedisClientOptions {
  enableOfflineQueue: boolean
  maxRetriesPerRequest: number
  commandTimeout?: number
  connectTimeout: number
  lazyConnect: boolean
  retryStrategy: (times: number) => number
}

/** Milliseconds a rate-limit hit may wait for Redis (kept by RedisStore): a slow Redis must not hold requests. */
export const DEFAULT_REDIS_COMMAND_TIMEOUT = 50

export interface RedisClientSettings {
  /**
   * Milliseconds one command may take before the client fails it. Unset: no client-side timeout. The
   * rate-limit plugin leaves it unset and has its `RedisStore` keep the time instead (see there: a
   * client-side timer also fails the commands whose answers arrived during an event-loop stall).
   * @defaultValue undefined
   */
  commandTimeout?: number
}

/**
 * The client options every Portcullis counter store uses: fail at once while disconnected (no
 * offline queue, no retries of a command) so a request is never held waiting for Redis, connect
 * explicitly, and reconnect in the background with a capped back-off.
 */
export function redisClientOptions (settings: RedisClientSettings = {}): RedisClientOptions {
  return {
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    ...(settings.commandTimeout !== undefined ? { commandTimeout: settings.commandTimeout } : {}),
    connectTimeout: 2000,
    lazyConnect: true,
    retryStrategy: (times: number) => Math.min(times * 200, 2000)
  }
}

/**
 * A new, not yet connected ioredis client for `url` with redisClientOptions. ioredis is an optional
 * peer dependency, loaded only here: an app that keeps its counts in memory never needs it.
 * Connection errors are left to each command (they surface where the command is used).
 */
export async function createRedisClient (url: string, settings: RedisClientSettings = {}): Promise<RedisClient> {
  let mod: { Redis: new (url: string, options: RedisClientOptions) => RedisClient }
  try {
    mod = await import('ioredis') as unknown as typeof mod
  } catch (err) {
    throw new Error('rate-limit plugin: option "redis" is a URL but the ioredis package is not installed (npm install ioredis)', { cause: err })
  }
  const redis = new mod.Redis(url, redisClientOptions(settings))
  redis.on('error', () => {})
  return redis
}
