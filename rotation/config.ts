import { Cron } from 'croner'
import { envEnum, envInt, envString, type Env } from '../lib/env.js'
import { ConfigError } from '../lib/errors.js'
import { dbOptionsFromEnv } from '../store/config.js'
import type { DbOptions } from '../store/db.js'
import { keyTimingsFromEnv, type KeyTimings } from '../store/key-timings.js'
import { DEFAULT_KEY_SIZE, KEY_SIZES, type KeySize } from '../store/keys.js'

/** Every 30 seconds, like Dex: each tick is a cheap read unless something is due. */
export const DEFAULT_ROTATION_SCHEDULE = '*/30 * * * * *'
export const DEFAULT_METRICS_HOST = '127.0.0.1'
export const DEFAULT_METRICS_PORT = 9464

export interface RotationConfig {
  db: DbOptions & { dataDir: string }
  timings: KeyTimings
  keySize: KeySize
  /** croner pattern (with seconds) for the daemon's ticks. */
  schedule: string
  metricsHost: string
  /** 0 picks a free port (logged). */
  metricsPort: number
  logLevel: string
}

export function rotationConfigFromEnv (env: Env): RotationConfig {
  const schedule = envString(env, 'ROTATION_SCHEDULE', DEFAULT_ROTATION_SCHEDULE)
  try {
    new Cron(schedule, { paused: true }).stop()
  } catch (err) {
    throw new ConfigError('ROTATION_SCHEDULE', `not a valid cron pattern "${schedule}" (${err instanceof Error ? err.message : String(err)})`)
  }
  const size = envEnum(env, 'KEY_SIZE', KEY_SIZES.map(String), String(DEFAULT_KEY_SIZE))
  return {
    db: dbOptionsFromEnv(env),
    timings: keyTimingsFromEnv(env),
    keySize: Number(size) as KeySize,
    schedule,
    metricsHost: envString(env, 'ROTATION_METRICS_HOST', DEFAULT_METRICS_HOST),
    metricsPort: envInt(env, 'ROTATION_METRICS_PORT', DEFAULT_METRICS_PORT, { min: 0, max: 65535 }),
    logLevel: envEnum(env, 'LOG_LEVEL', ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], 'info')
  }
}
