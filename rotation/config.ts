import { Cron } from 'croner'
import { envEnum, envInt, envString, LOG_ENV, logLevelFromEnv, type Env, type EnvTable, type ProcessEnv } from '../lib/env.js'
import { ConfigError } from '../lib/errors.js'
import { dbOptionsFromEnv, STORE_ENV } from '../store/config.js'
import type { DbOptions } from '../store/db.js'
import { KEY_TIMINGS_ENV, keyTimingsFromEnv, type KeyTimings } from '../store/key-timings.js'
import { DEFAULT_KEY_SIZE, KEY_SIZES, type KeySize } from '../store/keys.js'
import { SECRETS_ENV } from '../store/secrets.js'

/** Every 30 seconds, like Dex: each tick is a cheap read unless something is due. */
export const DEFAULT_ROTATION_SCHEDULE = '*/30 * * * * *'
export const DEFAULT_METRICS_HOST = '127.0.0.1'
/** Not 9464: the OpenTelemetry Prometheus exporter's; next to auth's admin port 8091 (docs/operations.md, "Default ports"). */
export const DEFAULT_METRICS_PORT = 8092

/** Every variable the rotation worker reads itself (rotationConfigFromEnv); `--help` and docs/configuration.md list these. */
export const ROTATION_ENV: EnvTable = [
  ['KEY_SIZE', String(DEFAULT_KEY_SIZE), `RSA modulus bits for new keys: ${KEY_SIZES.join(', ')}`],
  ['ROTATION_SCHEDULE', DEFAULT_ROTATION_SCHEDULE, 'croner pattern with a seconds field for the daemon\'s ticks (every 30 s by default)'],
  ['ROTATION_METRICS_HOST', DEFAULT_METRICS_HOST, 'metrics listener address (/metrics, /health/live, /health/ready); the worker has no public listener. 0.0.0.0 in a container, so that probes and the scraper reach it'],
  ['ROTATION_METRICS_PORT', String(DEFAULT_METRICS_PORT), 'metrics listener port (0: any free port, logged as metrics_listening)']
]

/** Everything `portcullis rotation` reads: ROTATION_ENV, the key timings, the store, the key secrets, the log level. */
export const ROTATION_PROCESS_ENV: ProcessEnv = { own: ROTATION_ENV, shared: [KEY_TIMINGS_ENV, STORE_ENV, SECRETS_ENV, LOG_ENV] }

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

/** Every setting `portcullis rotation` reads but the key secrets (loadKeySecrets reads PORTCULLIS_KEY_SECRETS). */
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
    logLevel: logLevelFromEnv(env)
  }
}
