import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import closeWithGrace from 'close-with-grace'
import { ConfigError, UsageError } from '../lib/errors.js'
import { listenOn } from '../lib/listen.js'
import { envBool, envDuration, envEnum, envInt, envString, envUrl, type Env } from '../lib/env.js'
import { JWKS_ENV, jwksOptionsFromEnv } from '../lib/jwks-env.js'
import { loadGatewayConfig, type GatewayConfig } from './config.js'
import { buildGateway, DEFAULT_HSTS_MAX_AGE, type Gateway, type GatewayOptions } from './server.js'
import { applyMemoryTuning, MEMORY_TUNING_FLAGS } from './tuning.js'

export const DEFAULT_CONFIG_PATH = fileURLToPath(new URL('./routes.example.yaml', import.meta.url))
export const DEFAULT_SHUTDOWN_GRACE = 30 // seconds

export const help = `Usage: portcullis gateway

Runs the API gateway: verifies tokens, authorizes, rate-limits and proxies to the upstreams listed in
the route file. Health, readiness and Prometheus metrics are served on the admin port only.

Environment:
  GATEWAY_HOST                   public listener address            (default 127.0.0.1)
  GATEWAY_PORT                   public listener port               (default 8080)
  GATEWAY_ADMIN_HOST             admin listener address             (default 127.0.0.1)
  GATEWAY_ADMIN_PORT             admin listener port                (default 9090)
  GATEWAY_CONFIG                 route file, YAML or JSON           (default gateway/routes.example.yaml)
  REDIS_URL                      redis:// URL: rate-limit counters shared by every replica (default in-memory)
  GATEWAY_RATE_LIMIT_FAIL_CLOSED true: answer 503 when Redis fails  (default false: let requests through)
  GATEWAY_TLS_CERT               PEM certificate file: serve HTTPS  (default unset: HTTP)
  GATEWAY_TLS_KEY                PEM private key file (with GATEWAY_TLS_CERT)
  GATEWAY_HSTS_MAX_AGE           HSTS max-age under TLS             (default 365d)
  GATEWAY_SHUTDOWN_GRACE         time to drain on SIGTERM before a forced exit (default 30s)
  GATEWAY_MEMORY_TUNING          false: keep V8's default heap sizing (default true: ${MEMORY_TUNING_FLAGS.join(' ')})
${JWKS_ENV.map(([n, d, m]) => `  ${n.padEnd(30)} ${m} (default ${d})`).join('\n')}
  LOG_LEVEL                      pino level                         (default info)`

export interface GatewaySettings {
  host: string
  port: number
  adminHost: string
  adminPort: number
  configPath: string
  redisUrl?: string
  failClosed: boolean
  tls?: { cert: Buffer, key: Buffer }
  hstsMaxAge: number
  shutdownGrace: number
  memoryTuning: boolean
}

/** Reads and validates every env var the gateway uses; a bad one throws a ConfigError naming it. */
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
  envEnum(env, 'LOG_LEVEL', ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], 'info') // read by lib/logger.ts
  return {
    host: envString(env, 'GATEWAY_HOST', '127.0.0.1'),
    port: envInt(env, 'GATEWAY_PORT', 8080, { min: 0, max: 65535 }),
    adminHost: envString(env, 'GATEWAY_ADMIN_HOST', '127.0.0.1'),
    adminPort: envInt(env, 'GATEWAY_ADMIN_PORT', 9090, { min: 0, max: 65535 }),
    configPath: envString(env, 'GATEWAY_CONFIG', DEFAULT_CONFIG_PATH),
    redisUrl: envUrl(env, 'REDIS_URL', ['redis:', 'rediss:'])?.href,
    failClosed: envBool(env, 'GATEWAY_RATE_LIMIT_FAIL_CLOSED', false),
    tls: certPath === undefined || keyPath === undefined
      ? undefined
      : { cert: read('GATEWAY_TLS_CERT', certPath), key: read('GATEWAY_TLS_KEY', keyPath) },
    hstsMaxAge: envDuration(env, 'GATEWAY_HSTS_MAX_AGE', DEFAULT_HSTS_MAX_AGE, { min: 0 }),
    shutdownGrace: envDuration(env, 'GATEWAY_SHUTDOWN_GRACE', DEFAULT_SHUTDOWN_GRACE, { min: 1 }),
    memoryTuning: envBool(env, 'GATEWAY_MEMORY_TUNING', true)
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
  const gw = await buildGateway({
    config,
    tls: s.tls,
    hstsMaxAge: s.hstsMaxAge,
    redisUrl: s.redisUrl,
    rateLimitFailClosed: s.failClosed,
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
