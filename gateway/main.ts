import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import closeWithGrace from 'close-with-grace'
import { ConfigError, UsageError } from '../lib/errors.js'
import { listenOn } from '../lib/listen.js'
import { durationText, envBool, envDuration, envHelp, envInt, envString, envUrl, LOG_ENV, logLevelFromEnv, type Env, type EnvTable, type ProcessEnv } from '../lib/env.js'
import { JWKS_ENV, jwksOptionsFromEnv } from '../lib/jwks-env.js'
import { DEFAULT_REDIS_COMMAND_TIMEOUT } from '@portcullis/rate-limit'
import { loadGatewayConfig, type GatewayConfig } from './config.js'
import { buildGateway, DEFAULT_HSTS_MAX_AGE, type Gateway, type GatewayOptions } from './server.js'
import { applyMemoryTuning, MEMORY_TUNING_FLAGS } from './tuning.js'
import { checkListenerLimits, defaultMaxConnections, DEFAULT_HEADERS_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_KEEP_ALIVE_TIMEOUT, DEFAULT_REQUEST_TIMEOUT, type ListenerLimits } from './listener.js'

export const DEFAULT_CONFIG_PATH = fileURLToPath(new URL('./routes.example.yaml', import.meta.url))
export const DEFAULT_SHUTDOWN_GRACE = 30 // seconds

export const DEFAULT_GATEWAY_HOST = '127.0.0.1'
export const DEFAULT_GATEWAY_PORT = 8080
export const DEFAULT_GATEWAY_ADMIN_PORT = 9090

/** Every variable the gateway reads itself (settingsFromEnv); `--help` and docs/configuration.md list these. */
export const GATEWAY_ENV: EnvTable = [
  ['GATEWAY_HOST', DEFAULT_GATEWAY_HOST, 'public listener address'],
  ['GATEWAY_PORT', String(DEFAULT_GATEWAY_PORT), 'public listener port'],
  ['GATEWAY_ADMIN_HOST', DEFAULT_GATEWAY_HOST, 'admin listener address (/health/live, /health/ready, /metrics)'],
  ['GATEWAY_ADMIN_PORT', String(DEFAULT_GATEWAY_ADMIN_PORT), 'admin listener port'],
  ['GATEWAY_CONFIG', 'gateway/routes.example.yaml', 'the route file, YAML (or JSON when it ends in .json): issuers, routes, rate limits, timeouts'],
  ['REDIS_URL', 'unset', 'redis:// or rediss:// URL: rate-limit counters shared by every gateway replica (unset: in memory, per process)'],
  ['GATEWAY_RATE_LIMIT_FAIL_CLOSED', 'false', 'when the Redis store fails: false lets requests through, true answers 503'],
  ['GATEWAY_REDIS_COMMAND_TIMEOUT', durationText(DEFAULT_REDIS_COMMAND_TIMEOUT / 1000), 'how long one rate-limit command may take; after 5 failures in a row Redis is bypassed for 5s (the fail-closed policy applies at once), then tried again'],
  ['GATEWAY_TLS_CERT', 'unset', 'PEM certificate file: the public listener serves HTTPS and sends HSTS (unset: HTTP)'],
  ['GATEWAY_TLS_KEY', 'unset', 'PEM private key file (set together with GATEWAY_TLS_CERT)'],
  ['GATEWAY_HSTS_MAX_AGE', durationText(DEFAULT_HSTS_MAX_AGE), 'Strict-Transport-Security max-age under TLS'],
  ['GATEWAY_SHUTDOWN_GRACE', durationText(DEFAULT_SHUTDOWN_GRACE), 'time to drain in-flight requests on SIGTERM/SIGINT before a forced exit'],
  ['GATEWAY_IDLE_TIMEOUT', durationText(DEFAULT_IDLE_TIMEOUT), 'a public connection with no traffic for this long is closed (0: never); longer than every route\'s timeouts'],
  ['GATEWAY_KEEP_ALIVE_TIMEOUT', durationText(DEFAULT_KEEP_ALIVE_TIMEOUT), 'an idle keep-alive connection is closed this long after its last response'],
  ['GATEWAY_HEADERS_TIMEOUT', durationText(DEFAULT_HEADERS_TIMEOUT), 'a request\'s headers must arrive within this (slow-header clients get 408 and are closed)'],
  ['GATEWAY_REQUEST_TIMEOUT', durationText(DEFAULT_REQUEST_TIMEOUT), 'the whole request, body included, must arrive within this (0: no limit)'],
  ['GATEWAY_MAX_CONNECTIONS', 'open-file limit - 256', 'public connections at most; more are closed on arrival, so clients never starve the gateway of descriptors for its upstreams'],
  ['GATEWAY_MEMORY_TUNING', 'true', `true: the gateway sets V8's ${MEMORY_TUNING_FLAGS.join(' ')} on itself at start; false keeps V8's default heap sizing`]
]

/** Everything `portcullis gateway` reads: GATEWAY_ENV, then the JWKS verifier settings and the log level. */
export const GATEWAY_PROCESS_ENV: ProcessEnv = { own: GATEWAY_ENV, shared: [JWKS_ENV, LOG_ENV] }

export const help = `Usage: portcullis gateway

Runs the API gateway: verifies tokens, authorizes, rate-limits and proxies to the upstreams listed in
the route file. Health, readiness and Prometheus metrics are served on the admin port only.

${envHelp(GATEWAY_PROCESS_ENV)}`

export interface GatewaySettings {
  host: string
  port: number
  adminHost: string
  adminPort: number
  configPath: string
  redisUrl?: string
  failClosed: boolean
  /** Milliseconds. */
  redisCommandTimeout: number
  tls?: { cert: Buffer, key: Buffer }
  hstsMaxAge: number
  shutdownGrace: number
  memoryTuning: boolean
  listener: ListenerLimits
}

/**
 * Reads and validates the gateway's own env vars (GATEWAY_ENV) and LOG_LEVEL; a bad one throws a
 * ConfigError naming it. createGateway reads the JWKS verifier settings (JWKS_ENV).
 */
export function settingsFromEnv (env: Env): GatewaySettings {
  const certPath = envString(env, 'GATEWAY_TLS_CERT')
  const keyPath = envString(env, 'GATEWAY_TLS_KEY')
  if ((certPath === undefined) !== (keyPath === undefined)) {
    throw new ConfigError(certPath === undefined ? 'GATEWAY_TLS_CERT' : 'GATEWAY_TLS_KEY', 'GATEWAY_TLS_CERT and GATEWAY_TLS_KEY must be set together')
  }
  const read = (name: string, path: string): Buffer => {
    try {
      return readFileSync(path)
    } catch (err) {
      throw new ConfigError(name, `cannot read ${path} (${(err as NodeJS.ErrnoException).code ?? 'error'})`)
    }
  }
  logLevelFromEnv(env) // checked here, read by lib/logger.ts
  return {
    host: envString(env, 'GATEWAY_HOST', DEFAULT_GATEWAY_HOST),
    port: envInt(env, 'GATEWAY_PORT', DEFAULT_GATEWAY_PORT, { min: 0, max: 65535 }),
    adminHost: envString(env, 'GATEWAY_ADMIN_HOST', DEFAULT_GATEWAY_HOST),
    adminPort: envInt(env, 'GATEWAY_ADMIN_PORT', DEFAULT_GATEWAY_ADMIN_PORT, { min: 0, max: 65535 }),
    configPath: envString(env, 'GATEWAY_CONFIG', DEFAULT_CONFIG_PATH),
    redisUrl: envUrl(env, 'REDIS_URL', ['redis:', 'rediss:'])?.href,
    failClosed: envBool(env, 'GATEWAY_RATE_LIMIT_FAIL_CLOSED', false),
    redisCommandTimeout: Math.max(1, Math.round(envDuration(env, 'GATEWAY_REDIS_COMMAND_TIMEOUT', DEFAULT_REDIS_COMMAND_TIMEOUT / 1000, { min: 0.001 }) * 1000)),
    tls: certPath === undefined || keyPath === undefined
      ? undefined
      : { cert: read('GATEWAY_TLS_CERT', certPath), key: read('GATEWAY_TLS_KEY', keyPath) },
    hstsMaxAge: envDuration(env, 'GATEWAY_HSTS_MAX_AGE', DEFAULT_HSTS_MAX_AGE, { min: 0 }),
    shutdownGrace: envDuration(env, 'GATEWAY_SHUTDOWN_GRACE', DEFAULT_SHUTDOWN_GRACE, { min: 1 }),
    memoryTuning: envBool(env, 'GATEWAY_MEMORY_TUNING', true),
    listener: {
      idleTimeout: envDuration(env, 'GATEWAY_IDLE_TIMEOUT', DEFAULT_IDLE_TIMEOUT, { min: 0 }),
      keepAliveTimeout: envDuration(env, 'GATEWAY_KEEP_ALIVE_TIMEOUT', DEFAULT_KEEP_ALIVE_TIMEOUT, { min: 0.001 }),
      headersTimeout: envDuration(env, 'GATEWAY_HEADERS_TIMEOUT', DEFAULT_HEADERS_TIMEOUT, { min: 0.001 }),
      requestTimeout: envDuration(env, 'GATEWAY_REQUEST_TIMEOUT', DEFAULT_REQUEST_TIMEOUT, { min: 0 }),
      maxConnections: envInt(env, 'GATEWAY_MAX_CONNECTIONS', defaultMaxConnections(), { min: 1 })
    }
  }
}

/**
 * What `portcullis gateway` builds from its settings (the bench starts the gateway through this too,
 * so it measures what users run): V8 memory tuning, the route file, the gateway. `extra` is for
 * benchmarks switching parts off. Does not listen.
 */
export async function createGateway (s: GatewaySettings, env: Env = process.env, extra: Partial<GatewayOptions> = {}): Promise<{ gw: Gateway, config: GatewayConfig }> {
  if (s.memoryTuning) applyMemoryTuning()
  const config = loadGatewayConfig(s.configPath)
  checkListenerLimits(s.listener, config)
  const gw = await buildGateway({
    listener: s.listener,
    config,
    tls: s.tls,
    hstsMaxAge: s.hstsMaxAge,
    redisUrl: s.redisUrl,
    rateLimitFailClosed: s.failClosed,
    redisCommandTimeout: s.redisCommandTimeout,
    auth: jwksOptionsFromEnv(env),
    ...extra
  })
  return { gw, config }
}

/** `portcullis gateway`: listens on the public and admin ports; SIGTERM/SIGINT drain, then exit. */
export async function run (argv: string[]): Promise<number> {
  if (argv.length > 0) throw new UsageError(`gateway: unknown argument "${argv[0]}" (settings come from the environment; see portcullis gateway --help)`)
  const s = settingsFromEnv(process.env)
  const { gw, config } = await createGateway(s)
  const log = gw.app.log
  // On SIGTERM: stop accepting, let in-flight requests finish (Fastify closes idle keep-alive
  // sockets and answers 503 on busy ones), then exit; forced exit after the grace period.
  const grace = closeWithGrace({ delay: s.shutdownGrace * 1000, logger: { error: (m: unknown) => log.error(m) } }, async ({ signal, err }) => {
    if (err !== undefined) log.error({ err }, 'fatal error, shutting down')
    else log.info({ signal }, 'shutting down: draining in-flight requests')
    await gw.close()
    log.info('gateway stopped')
  })
  try {
    await listenOn(gw.app, s.host, s.port, 'GATEWAY_PORT')
    await listenOn(gw.admin, s.adminHost, s.adminPort, 'GATEWAY_ADMIN_PORT')
  } catch (err) {
    // e.g. EADDRINUSE: close what was opened (Redis client, timers) so the process can exit with 1
    // (close-with-grace's beforeExit handler would otherwise exit 0)
    grace.uninstall()
    await gw.close()
    throw err
  }
  log.info({ routes: config.routes.length, config: s.configPath, tls: s.tls !== undefined, redis: s.redisUrl !== undefined }, 'gateway ready')
  return 0
}
