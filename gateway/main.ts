import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import cluster from 'node:cluster'
import closeWithGrace from 'close-with-grace'
import { ConfigError, UsageError } from '../lib/errors.js'
import { listenOn } from '../lib/listen.js'
import { durationText, envBool, envDuration, envHelp, envInt, envString, envUrl, LOG_ENV, logLevelFromEnv, type Env, type EnvTable, type ProcessEnv } from '../lib/env.js'
import { JWKS_ENV, jwksOptionsFromEnv } from '../lib/jwks-env.js'
import { TRACING_ENV, tracingFromEnv } from '../lib/tracing-env.js'
import type { TracingPluginOptions } from '@portcullis/tracing'
import { DEFAULT_REDIS_COMMAND_TIMEOUT } from '@portcullis/rate-limit'
import { loadGatewayConfig, type GatewayConfig } from './config.js'
import { buildGateway, DEFAULT_HSTS_MAX_AGE, gatewayLogger, type Gateway, type GatewayOptions } from './server.js'
import { checkWorkers, isGatewayWorker, runPrimary, serveWorker, workerLogMaxWrite, workersFromEnv } from './cluster.js'
import { BatchedDestination } from '../lib/log-destination.js'
import { GatewayRuntime, loadRouteFile, type RuntimeOptions } from './runtime.js'
import { checkProblems, envProblems, reportCheck } from '../lib/check.js'
import { DEFAULT_DRAIN_DELAY } from '../lib/drain.js'
import { applyMemoryTuning, MEMORY_TUNING_FLAGS } from './tuning.js'
import { checkListenerLimits, defaultMaxConnections, DEFAULT_HEADERS_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_KEEP_ALIVE_TIMEOUT, DEFAULT_REQUEST_TIMEOUT, type ListenerLimits } from './listener.js'

export const DEFAULT_CONFIG_PATH = fileURLToPath(new URL('./routes.example.yaml', import.meta.url))
export const DEFAULT_SHUTDOWN_GRACE = 30 // seconds

export const DEFAULT_GATEWAY_HOST = '127.0.0.1'
export const DEFAULT_GATEWAY_PORT = 8080
export const DEFAULT_GATEWAY_ADMIN_PORT = 8090

/** Every variable the gateway reads itself (settingsFromEnv); `--help` and docs/configuration.md list these. */
export const GATEWAY_ENV: EnvTable = [
  ['GATEWAY_HOST', DEFAULT_GATEWAY_HOST, 'public listener address'],
  ['GATEWAY_PORT', String(DEFAULT_GATEWAY_PORT), 'public listener port'],
  ['GATEWAY_ADMIN_HOST', DEFAULT_GATEWAY_HOST, 'admin listener address (/health/live, /health/ready, /metrics, /config, /status)'],
  ['GATEWAY_ADMIN_PORT', String(DEFAULT_GATEWAY_ADMIN_PORT), 'admin listener port'],
  ['GATEWAY_CONFIG', 'gateway/routes.example.yaml', 'the route file, YAML (or JSON when it ends in .json): issuers, routes, rate limits, timeouts'],
  ['REDIS_URL', 'unset', 'redis:// or rediss:// URL: rate-limit counters shared by every gateway replica (unset: in memory, per process)'],
  ['GATEWAY_RATE_LIMIT_FAIL_CLOSED', 'false', 'when the Redis store fails: false lets requests through, true answers 503'],
  ['GATEWAY_REDIS_COMMAND_TIMEOUT', durationText(DEFAULT_REDIS_COMMAND_TIMEOUT / 1000), 'how long one rate-limit command may take; after 5 failures in a row Redis is bypassed for 5s (the fail-closed policy applies at once), then tried again'],
  ['GATEWAY_TLS_CERT', 'unset', 'PEM certificate file: the public listener serves HTTPS and sends HSTS (unset: HTTP)'],
  ['GATEWAY_TLS_KEY', 'unset', 'PEM private key file (set together with GATEWAY_TLS_CERT)'],
  ['GATEWAY_HSTS_MAX_AGE', durationText(DEFAULT_HSTS_MAX_AGE), 'Strict-Transport-Security max-age under TLS'],
  ['GATEWAY_DRAIN_DELAY', durationText(DEFAULT_DRAIN_DELAY), 'on SIGTERM, readiness answers 503 and requests are still served for this long before the listener closes, so load balancers stop sending first (SIGINT skips it)'],
  ['GATEWAY_SHUTDOWN_GRACE', durationText(DEFAULT_SHUTDOWN_GRACE), 'time to drain in-flight requests on SIGTERM/SIGINT before a forced exit'],
  ['GATEWAY_IDLE_TIMEOUT', durationText(DEFAULT_IDLE_TIMEOUT), 'a public connection with no traffic for this long is closed (0: never); longer than every route\'s timeouts'],
  ['GATEWAY_KEEP_ALIVE_TIMEOUT', durationText(DEFAULT_KEEP_ALIVE_TIMEOUT), 'an idle keep-alive connection is closed this long after its last response'],
  ['GATEWAY_HEADERS_TIMEOUT', durationText(DEFAULT_HEADERS_TIMEOUT), 'a request\'s headers must arrive within this (slow-header clients get 408 and are closed)'],
  ['GATEWAY_REQUEST_TIMEOUT', durationText(DEFAULT_REQUEST_TIMEOUT), 'the whole request, body included, must arrive within this (0: no limit)'],
  ['GATEWAY_MAX_CONNECTIONS', 'open-file limit - 256', 'public connections at most; more are closed on arrival, so clients never starve the gateway of descriptors for its upstreams'],
  ['GATEWAY_STATUS_KEYS_URL', 'unset', 'the auth service\'s key timeline (its admin listener\'s /keys), shown by the admin listener\'s /status page and /status.json; unset: the page shows the kids of each issuer\'s JWKS without their timeline'],
  ['GATEWAY_WORKERS', '1', 'gateway processes sharing the public port (node:cluster), each on its own core: a number, or auto for one per available core (recommended in production); a worker that dies is replaced. More than 1 with any rate limit requires REDIS_URL, so a caller\'s limit is not multiplied by the workers'],
  ['GATEWAY_MEMORY_TUNING', 'true', `true: the gateway sets V8's ${MEMORY_TUNING_FLAGS.join(' ')} on itself at start; false keeps V8's default heap sizing`]
]

/** Everything `portcullis gateway` reads: GATEWAY_ENV, then the JWKS verifier settings and the log level. */
export const GATEWAY_PROCESS_ENV: ProcessEnv = { own: GATEWAY_ENV, shared: [JWKS_ENV, TRACING_ENV, LOG_ENV] }

export const help = `Usage: portcullis gateway [--check [route-file]]

Runs the API gateway: verifies tokens, authorizes, rate-limits and proxies to the upstreams listed in
the route file. Health, readiness and Prometheus metrics are served on the admin port only.
SIGHUP (or POST /config/reload on the admin port) reloads the route file without a restart: the new
file is validated in full first, and on any error the running config stays.

  --check [file]  validate the settings and the route file (GATEWAY_CONFIG, or file) as a start
                  would, without listening: prints ok (exit 0) or every problem (exit 1)

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
  drainDelay: number
  memoryTuning: boolean
  /** GATEWAY_WORKERS resolved: how many worker processes (1: the gateway runs in this process). */
  workers: number
  listener: ListenerLimits
  /** Trace export (the OpenTelemetry variables, TRACING_ENV). */
  tracing: TracingPluginOptions
  /** GATEWAY_STATUS_KEYS_URL. */
  statusKeysUrl?: string
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
    drainDelay: envDuration(env, 'GATEWAY_DRAIN_DELAY', DEFAULT_DRAIN_DELAY, { min: 0 }),
    memoryTuning: envBool(env, 'GATEWAY_MEMORY_TUNING', true),
    workers: workersFromEnv(env),
    listener: {
      idleTimeout: envDuration(env, 'GATEWAY_IDLE_TIMEOUT', DEFAULT_IDLE_TIMEOUT, { min: 0 }),
      keepAliveTimeout: envDuration(env, 'GATEWAY_KEEP_ALIVE_TIMEOUT', DEFAULT_KEEP_ALIVE_TIMEOUT, { min: 0.001 }),
      headersTimeout: envDuration(env, 'GATEWAY_HEADERS_TIMEOUT', DEFAULT_HEADERS_TIMEOUT, { min: 0.001 }),
      requestTimeout: envDuration(env, 'GATEWAY_REQUEST_TIMEOUT', DEFAULT_REQUEST_TIMEOUT, { min: 0 }),
      maxConnections: envInt(env, 'GATEWAY_MAX_CONNECTIONS', defaultMaxConnections(), { min: 1 })
    },
    tracing: tracingFromEnv(env, 'portcullis-gateway'),
    statusKeysUrl: envUrl(env, 'GATEWAY_STATUS_KEYS_URL', ['http:', 'https:'])?.href
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
  // the options the running gateway gets (runtimeOptions), less what only the runtime uses
  const { configPath: _path, drainDelay: _drain, reloadKeysTimeout: _keys, statusKeysUrl: _status, workers: _workers, ...opts } = runtimeOptions(s, env)
  const gw = await buildGateway({ ...opts, config, ...extra })
  return { gw, config }
}

/** The options of the running gateway (GatewayRuntime) from its settings. */
export function runtimeOptions (s: GatewaySettings, env: Env = process.env): RuntimeOptions {
  return {
    configPath: s.configPath,
    listener: s.listener,
    tls: s.tls,
    hstsMaxAge: s.hstsMaxAge,
    redisUrl: s.redisUrl,
    rateLimitFailClosed: s.failClosed,
    redisCommandTimeout: s.redisCommandTimeout,
    auth: jwksOptionsFromEnv(env),
    tracing: s.tracing,
    statusKeysUrl: s.statusKeysUrl,
    drainDelay: s.drainDelay,
    workers: s.workers
  }
}

/**
 * `portcullis gateway --check [file]`: what a start would refuse, without listening or connecting:
 * each environment variable, the route file, the timing rules between them, and the plugins' own
 * option checks (a gateway is built and closed at once). Every problem is printed, one per setting.
 */
export async function check (file: string | undefined, env: Env = process.env, out?: (line: string) => void, err?: (line: string) => void): Promise<number> {
  const names = [...GATEWAY_ENV.map(([n]) => n), 'LOG_LEVEL']
  const problems = envProblems(env, names, settingsFromEnv, [['GATEWAY_TLS_CERT', 'GATEWAY_TLS_KEY']])
  problems.push(...envProblems(env, JWKS_ENV.rows.map(([n]) => n), jwksOptionsFromEnv))
  problems.push(...envProblems(env, TRACING_ENV.rows.map(([n]) => n), (e) => tracingFromEnv(e, 'portcullis-gateway')))
  let s: GatewaySettings | undefined
  try {
    s = settingsFromEnv(env)
  } catch { /* reported above */ }
  const configPath = file ?? s?.configPath ?? envString(env, 'GATEWAY_CONFIG', DEFAULT_CONFIG_PATH)
  let config: GatewayConfig | undefined
  problems.push(...await checkProblems([
    () => { config = loadGatewayConfig(configPath) },
    () => { if (s !== undefined && config !== undefined) checkListenerLimits(s.listener, config) },
    () => { if (s !== undefined && config !== undefined) checkWorkers(s.workers, config, s.redisUrl) },
    async () => {
      if (s === undefined || config === undefined || problems.length > 0) return
      // the plugins check their own options at registration; no Redis connection, nothing listens
      const gw = await buildGateway({ config, listener: s.listener, external: true, auth: jwksOptionsFromEnv(env), logger: { level: 'silent' } })
      try {
        await gw.app.ready()
      } finally {
        await gw.close()
      }
    }
  ]))
  return reportCheck(`portcullis gateway --check ${configPath}`, problems, out, err)
}

/** `portcullis gateway`: listens on the public and admin ports; SIGHUP reloads the route file; SIGTERM/SIGINT drain, then exit. */
export async function run (argv: string[]): Promise<number> {
  if (argv[0] === '--check') {
    if (argv.length > 2) throw new UsageError(`gateway: unexpected argument "${argv[2]}" (usage: portcullis gateway --check [route-file])`)
    return await check(argv[1])
  }
  if (argv.length > 0) throw new UsageError(`gateway: unknown argument "${argv[0]}" (settings come from the environment; see portcullis gateway --help)`)
  const s = settingsFromEnv(process.env)
  const worker = isGatewayWorker()
  if (s.workers > 1 && !worker) {
    // the primary: every setting and the route file checked before a worker starts
    const config = loadRouteFile(s.configPath, s.listener, s.workers, s.redisUrl)
    cluster.setupPrimary({ execArgv: process.execArgv })
    const logger = gatewayLogger()
    const code = await runPrimary({ workers: s.workers, adminHost: s.adminHost, adminPort: s.adminPort, drainDelay: s.drainDelay, shutdownGrace: s.shutdownGrace, logger })
    logger.info({ workers: s.workers, routes: config.routes.length, config: s.configPath, tls: s.tls !== undefined, redis: s.redisUrl !== undefined }, 'gateway ready')
    return code
  }
  if (s.memoryTuning) applyMemoryTuning()
  if (worker) return await runWorker(s)
  const rt = await GatewayRuntime.start(runtimeOptions(s))
  const log = rt.log
  const onHangup = (): void => { void rt.reload('SIGHUP') }
  process.on('SIGHUP', onHangup)
  // On SIGTERM: readiness 503, then stop accepting, let in-flight requests finish (idle keep-alive
  // sockets are closed, busy ones get 503 with Connection: close), then exit; forced exit after the
  // grace period. SIGHUP is a reload, not a shutdown.
  const grace = closeWithGrace({ delay: (s.drainDelay + s.shutdownGrace) * 1000, skip: ['SIGHUP'], logger: { error: (m: unknown) => log.error(m) } }, async ({ signal, err }) => {
    process.removeListener('SIGHUP', onHangup)
    if (err !== undefined) log.error({ err }, 'fatal error, shutting down')
    else log.info({ signal }, 'shutting down: readiness 503, then draining in-flight requests')
    await rt.close(signal)
    log.info('gateway stopped')
  })
  try {
    await rt.listen(s.host, s.port, 'GATEWAY_PORT')
    await listenOn(rt.admin, s.adminHost, s.adminPort, 'GATEWAY_ADMIN_PORT')
  } catch (err) {
    // e.g. EADDRINUSE: close what was opened (Redis client, timers) so the process can exit with 1
    // (close-with-grace's beforeExit handler would otherwise exit 0)
    grace.uninstall()
    process.removeListener('SIGHUP', onHangup)
    await rt.close()
    throw err
  }
  log.info({ routes: rt.config.routes.length, config: s.configPath, version: rt.version, tls: s.tls !== undefined, redis: s.redisUrl !== undefined }, 'gateway ready')
  return 0
}

/**
 * One worker of a gateway with GATEWAY_WORKERS > 1: the same gateway, listening on the public port
 * shared through node:cluster; its admin app answers through the primary (gateway/cluster.ts). It
 * stops once, whatever asks first: the primary (which passes on SIGTERM/SIGINT), a signal of its own
 * (a service manager may signal every process of the group), or the primary going away; a second
 * request does not cut the drain short. Forced exit after the drain delay and grace period.
 */
async function runWorker (s: GatewaySettings): Promise<number> {
  // lines of every worker share the primary's stdout: whole lines per write when it is a pipe
  const rt = await GatewayRuntime.start({ ...runtimeOptions(s), logger: gatewayLogger(undefined, new BatchedDestination({ maxWrite: workerLogMaxWrite() })) })
  const log = rt.log
  const onHangup = (): void => { void rt.reload('SIGHUP') }
  let stopping: Promise<void> | undefined
  const stop = (signal: string): void => {
    stopping ??= (async () => {
      process.removeListener('SIGHUP', onHangup)
      log.info({ signal }, 'shutting down: readiness 503, then draining in-flight requests')
      setTimeout(() => {
        log.error('grace period over: exiting with requests still in flight')
        process.exit(1)
      }, (s.drainDelay + s.shutdownGrace) * 1000).unref()
      try {
        await rt.close(signal)
        log.info('gateway worker stopped')
      } finally {
        process.exit(0)
      }
    })()
  }
  process.on('SIGTERM', () => { stop('SIGTERM') })
  process.on('SIGINT', () => { stop('SIGINT') })
  process.on('SIGHUP', onHangup)
  process.on('uncaughtException', (err) => {
    log.fatal({ err }, 'fatal error in a gateway worker: exiting (the primary starts another)')
    process.exit(1)
  })
  try {
    await rt.listen(s.host, s.port, 'GATEWAY_PORT')
  } catch (err) {
    await rt.close()
    process.channel?.unref() // the channel to the primary would keep this process up after the error
    throw err
  }
  serveWorker(rt, stop)
  return 0
}
