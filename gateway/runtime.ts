import { createHash } from 'node:crypto'
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { createServer as createHttpsServer } from 'node:https'
import { setTimeout as sleep } from 'node:timers/promises'
import Fastify, { type FastifyInstance } from 'fastify'
import { admin, collectProcessMetrics, promClient, type Registry } from '@portcullis/metrics'
import type { Logger } from 'pino'
import type { Pool } from 'undici'
import { listenError } from '../lib/listen.js'
import { drain, DrainState, DRAINING_REASON } from '../lib/drain.js'
import { loadGatewayConfig, type GatewayConfig } from './config.js'
import { checkListenerLimits, type ListenerLimits } from './listener.js'
import { createOtlpProvider, type OtlpProvider } from '@portcullis/tracing'
import { gatewayStatus } from './status.js'
import { statusPageCsp, statusPageHtml } from './status-page.js'
import { buildGateway, clientErrorResponse, gatewayLogger, type Gateway, type GatewayOptions } from './server.js'
import { UpstreamPools } from './upstream.js'
import { checkWorkers } from './cluster.js'

/** How long a reload waits for the new config's issuers' keys before it gives up (the running config stays). */
export const RELOAD_JWKS_TIMEOUT = 10_000 // ms

export type ReloadTrigger = 'SIGHUP' | 'admin' | 'start'

export interface ReloadResult {
  /** `success`: the new config serves new requests; `unchanged`: the file gives the running config; `failure`: nothing changed. */
  result: 'success' | 'unchanged' | 'failure'
  /** The running config's version after the attempt. */
  version: string
  /** What was wrong with the file (failure only): the file, the setting and the reason. */
  error?: string
}

export interface RuntimeOptions extends Omit<GatewayOptions, 'config' | 'external' | 'pools' | 'logger'> {
  /** The route file, read again at each reload. */
  configPath: string
  listener: ListenerLimits
  logger?: Logger
  /** After SIGTERM, readiness answers 503 for this long before the listener closes (seconds; lib/drain.ts). @defaultValue 0 */
  drainDelay?: number
  /** How long a reload waits for its issuers' keys (ms). @defaultValue RELOAD_JWKS_TIMEOUT */
  reloadKeysTimeout?: number
  /** The auth service's key timeline (admin `/keys`) shown by `/status`. @defaultValue the kids of the JWKS only */
  statusKeysUrl?: string
  /** Gateway processes sharing the public port (GATEWAY_WORKERS): a config each would rate-limit in memory is refused when more than 1. @defaultValue 1 */
  workers?: number
}

/** The generation a response was dispatched to (set on the response object). */
const kGeneration = Symbol('portcullis.generation')

/** One loaded config and the gateway built from it. */
interface Generation {
  gw: Gateway
  config: GatewayConfig
  version: string
  loadedAt: Date
  /** Requests dispatched to it that have not finished. */
  inflight: number
  /** Replaced by a newer config: closed once its last request is done. */
  retired: boolean
  closed?: Promise<void>
}

/**
 * Reads the route file and checks it against the process's settings: the listener's timeouts and the
 * workers' rate-limit rule. Every start and reload (and a primary before its workers) goes through it.
 */
export function loadRouteFile (path: string, listener: ListenerLimits, workers = 1, redisUrl?: string): GatewayConfig {
  const config = loadGatewayConfig(path)
  checkListenerLimits(listener, config)
  checkWorkers(workers, config, redisUrl)
  return config
}

/** A short, stable version of a loaded config: the first 12 hex digits of the SHA-256 of its canonical JSON. */
export function configVersion (config: GatewayConfig): string {
  return createHash('sha256').update(canonicalJson(config)).digest('hex').slice(0, 12)
}

function canonicalJson (v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(',')}]`
  if (v !== null && typeof v === 'object') {
    return `{${Object.keys(v).sort().filter((k) => (v as Record<string, unknown>)[k] !== undefined).map((k) => `${JSON.stringify(k)}:${canonicalJson((v as Record<string, unknown>)[k])}`).join(',')}}`
  }
  return JSON.stringify(v) ?? 'null'
}

const SECRET_KEY = /secret|password|token|credential|private|apikey|api_key/i

/** The config as the admin listener shows it: secret-looking keys and URL credentials redacted. */
export function redactConfig (v: unknown, key = ''): unknown {
  if (typeof v === 'string') {
    if (SECRET_KEY.test(key)) return '[redacted]'
    if (/^[a-z][a-z0-9+.-]*:\/\/[^/?#]*@/i.test(v)) {
      try {
        const u = new URL(v)
        if (u.username !== '' || u.password !== '') {
          u.username = 'redacted'
          u.password = ''
          return u.href
        }
      } catch { /* not a URL: as it is */ }
    }
    return v
  }
  if (Array.isArray(v)) return v.map((x) => redactConfig(x, key))
  if (v !== null && typeof v === 'object') {
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, SECRET_KEY.test(k) && x !== null && typeof x !== 'object' ? '[redacted]' : redactConfig(x, k)]))
  }
  return v
}

/**
 * The running gateway: one public listener whose requests go to the gateway built from the current
 * route file, and a reload that builds the next one beside it.
 *
 * A reload reads and validates the whole file, builds a complete gateway from it (plugins, issuers,
 * routes, limits, breakers) and waits for its issuers' keys; only then do new requests go to it, at
 * once and all together. Requests already dispatched finish on the config they started with; that
 * gateway closes after its last one. Upstream pools are shared by key (origin and timeouts): unchanged
 * upstreams keep their connections, removed ones are closed once their requests are done. On any
 * error the running config stays and the error is logged and counted. Reloads run one at a time.
 *
 * Counters of the gateway's own metrics (requests, upstream errors, auth results) and in-memory rate
 * limit counters start again with each config, as after a restart; the process metrics and
 * `portcullis_config_*` carry on.
 */
export class GatewayRuntime {
  readonly server: Server
  readonly admin: FastifyInstance
  readonly log: Logger
  readonly #opts: RuntimeOptions
  #exporter: OtlpProvider | undefined
  readonly #startedAt = new Date()
  readonly #pools: UpstreamPools
  readonly #registry: Registry = new promClient.Registry()
  readonly #reloads: promClient.Counter<'result'>
  readonly #info: promClient.Gauge<'version'>
  readonly #loaded: promClient.Gauge
  #current: Generation
  readonly #generations = new Set<Generation>()
  #queue: Promise<unknown> = Promise.resolve()
  #stopping = false
  readonly #drain = new DrainState()
  #closing?: Promise<void>

  private constructor (opts: RuntimeOptions, logger: Logger, first: Generation, pools: UpstreamPools) {
    this.#opts = opts
    this.#pools = pools
    this.log = logger
    this.#current = first
    this.#generations.add(first)
    collectProcessMetrics(this.#registry)
    this.#reloads = new promClient.Counter({
      name: 'portcullis_config_reloads_total',
      help: 'Route-file reloads by result: success (the new config serves), unchanged (same config), failure (the running config stays)',
      labelNames: ['result'],
      registers: [this.#registry]
    })
    for (const result of ['success', 'unchanged', 'failure']) this.#reloads.inc({ result }, 0)
    this.#info = new promClient.Gauge({
      name: 'portcullis_config_info',
      help: 'The running route file\'s version (as on the admin listener\'s /config): 1 for the running one',
      labelNames: ['version'],
      aggregator: 'max', // one value over the gateway's workers (a sum would mean nothing)
      registers: [this.#registry]
    })
    this.#info.set({ version: first.version }, 1)
    this.#loaded = new promClient.Gauge({
      name: 'portcullis_config_loaded_timestamp_seconds',
      help: 'When the running route file was loaded (Unix time)',
      aggregator: 'min', // one value over the gateway's workers (a sum would mean nothing)
      registers: [this.#registry]
    })
    this.#loaded.set(first.loadedAt.getTime() / 1000)

    const l = opts.listener
    const nodeLimits = {
      headersTimeout: l.headersTimeout * 1000,
      requestTimeout: l.requestTimeout * 1000,
      keepAliveTimeout: l.keepAliveTimeout * 1000,
      // Node checks the headers and request timeouts on this interval (30 s by default): often enough to honour them
      connectionsCheckingInterval: Math.max(100, Math.min(1000, l.headersTimeout * 500))
    }
    // One listener function for every response, no closure per request: the response carries its
    // generation, and the emitter is the listener's `this`.
    const retire = (g: Generation): void => { void this.#retire(g) }
    function done (this: ServerResponse & { [kGeneration]?: Generation }): void {
      const g = this[kGeneration]!
      if (--g.inflight === 0 && g.retired) retire(g)
    }
    const dispatch = (req: IncomingMessage, res: ServerResponse & { [kGeneration]?: Generation }): void => {
      const g = this.#current
      g.inflight++
      res[kGeneration] = g
      res.once('close', done)
      g.gw.handle!(req, res)
    }
    this.server = opts.tls === undefined
      ? createHttpServer(nodeLimits, dispatch)
      : createHttpsServer({ ...nodeLimits, cert: opts.tls.cert, key: opts.tls.key }, dispatch)
    this.server.timeout = l.idleTimeout * 1000
    this.server.keepAliveTimeout = l.keepAliveTimeout * 1000
    // Over the cap, Node closes a new connection at once: the descriptors the gateway needs for its
    // upstreams stay free
    this.server.maxConnections = l.maxConnections
    this.server.on('clientError', clientErrorResponse)

    this.admin = Fastify({ logger: false })
  }

  /** Loads the route file and builds the first gateway; listens nowhere yet (`listen`). */
  static async start (input: RuntimeOptions): Promise<GatewayRuntime> {
    const logger = input.logger ?? gatewayLogger()
    const pools = new UpstreamPools()
    const config = loadRouteFile(input.configPath, input.listener, input.workers, input.redisUrl)
    // One span exporter for the process, handed to every config's app: a reload neither drops the
    // spans of the old config's last requests nor opens a second exporter.
    const { exportUrl, ...tracing } = input.tracing ?? {}
    const exporter = exportUrl !== undefined && tracing.tracerProvider === undefined
      ? createOtlpProvider({
        url: exportUrl,
        headers: tracing.exportHeaders,
        serviceName: tracing.serviceName,
        sampler: tracing.sampler,
        samplerRatio: tracing.samplerRatio,
        scheduledDelayMillis: tracing.scheduledDelayMillis,
        log: logger
      })
      : undefined
    const opts: RuntimeOptions = exporter === undefined ? input : { ...input, tracing: { ...tracing, tracerProvider: exporter.provider } }
    let gw: Gateway
    try {
      gw = await buildGateway({ ...opts, config, logger, external: true, pools })
      await gw.app.ready()
    } catch (err) {
      await exporter?.shutdown()
      throw err
    }
    const rt = new GatewayRuntime(opts, logger, { gw, config, version: configVersion(config), loadedAt: new Date(), inflight: 0, retired: false }, pools)
    rt.#exporter = exporter
    await rt.#registerAdmin()
    return rt
  }

  get config (): GatewayConfig {
    return this.#current.config
  }

  get version (): string {
    return this.#current.version
  }

  /** Upstream pools open (each origin and timeouts once, shared by every config still serving). */
  get poolCount (): number {
    return this.#pools.size
  }

  /** The app serving new requests (tests, and the JWKS readiness check). */
  get current (): Gateway {
    return this.#current.gw
  }

  /** The registries `/metrics` serves: the runtime's own (process, config) and the current config's gateway's. */
  metricsRegistries (): Registry[] {
    return [this.#registry, this.#current.gw.app.metricsRegistry]
  }

  async #registerAdmin (): Promise<void> {
    await this.admin.register(admin, {
      registries: () => this.metricsRegistries(),
      ready: () => {
        if (this.#stopping) return DRAINING_REASON
        const app = this.#current.gw.app
        return !app.hasDecorator('jwksAuth') || app.jwksAuth.isReady() || 'JWKS of every issuer not fetched yet'
      }
    })
    this.admin.get('/config', { logLevel: 'warn' }, async () => ({
      version: this.#current.version,
      loadedAt: this.#current.loadedAt.toISOString(),
      file: this.#opts.configPath,
      config: redactConfig(this.#current.config)
    }))
    // the operator page and the document it reads (also for scripts: docs/operations.md)
    this.admin.get('/status.json', { logLevel: 'warn' }, async (_req, reply) => {
      const g = this.#current
      const app = g.gw.app
      const doc = await gatewayStatus({
        version: g.version,
        loadedAt: g.loadedAt,
        startedAt: this.#startedAt,
        config: g.config,
        issuers: () => app.hasDecorator('jwksAuth') ? app.jwksAuth.status() : [],
        registries: () => [this.#registry, app.metricsRegistry],
        keysUrl: this.#opts.statusKeysUrl
      })
      return reply.header('cache-control', 'no-store').send(doc)
    })
    const page = statusPageHtml()
    const csp = statusPageCsp()
    this.admin.get('/status', { logLevel: 'warn' }, async (_req, reply) => {
      return reply.type('text/html; charset=utf-8').header('content-security-policy', csp)
        .header('cache-control', 'no-store').header('x-content-type-options', 'nosniff').send(page)
    })
    this.admin.post('/config/reload', { logLevel: 'warn' }, async (_req, reply) => {
      const r = await this.reload('admin')
      return reply.code(r.result === 'failure' ? 422 : 200).send(r)
    })
  }

  /** Reads the route file again and, when it is valid and different, serves new requests with it. */
  reload (trigger: ReloadTrigger): Promise<ReloadResult> {
    const run = this.#queue.then(async () => await this.#reload(trigger))
    this.#queue = run.catch(() => {})
    return run
  }

  async #reload (trigger: ReloadTrigger): Promise<ReloadResult> {
    const file = this.#opts.configPath
    if (this.#stopping) return { result: 'failure', version: this.version, error: 'the gateway is shutting down' }
    let gw: Gateway | undefined
    try {
      const config = loadRouteFile(file, this.#opts.listener, this.#opts.workers, this.#opts.redisUrl)
      const version = configVersion(config)
      if (version === this.#current.version) {
        this.#reloads.inc({ result: 'unchanged' })
        this.log.info({ trigger, file, version }, 'config reload: unchanged')
        return { result: 'unchanged', version }
      }
      gw = await buildGateway({ ...this.#opts, config, logger: this.log, external: true, pools: this.#pools })
      await gw.app.ready()
      await this.#keysReady(gw)
      if (this.#stopping) throw new Error('the gateway is shutting down')
      const next: Generation = { gw, config, version, loadedAt: new Date(), inflight: 0, retired: false }
      const prev = this.#current
      this.#generations.add(next)
      this.#current = next
      this.#info.remove({ version: prev.version })
      this.#info.set({ version }, 1)
      this.#loaded.set(next.loadedAt.getTime() / 1000)
      this.#reloads.inc({ result: 'success' })
      this.log.info({ trigger, file, version, previous: prev.version, routes: config.routes.length }, 'config reloaded')
      prev.retired = true
      if (prev.inflight === 0) void this.#retire(prev)
      return { result: 'success', version }
    } catch (err) {
      if (gw !== undefined) await gw.close().catch(() => {})
      // pools only the failed config opened
      await this.#pools.retain(this.#poolsInUse())
      const error = (err as Error).message
      this.#reloads.inc({ result: 'failure' })
      this.log.error({ trigger, file, error }, 'config reload failed: the running config stays')
      return { result: 'failure', version: this.version, error }
    }
  }

  /** Resolves once every issuer of `gw` has its keys; throws naming the ones that do not within RELOAD_JWKS_TIMEOUT. */
  async #keysReady (gw: Gateway): Promise<void> {
    const app = gw.app
    if (!app.hasDecorator('jwksAuth')) return
    const timeout = this.#opts.reloadKeysTimeout ?? RELOAD_JWKS_TIMEOUT
    const deadline = Date.now() + timeout
    while (!app.jwksAuth.isReady()) {
      if (Date.now() > deadline) throw new Error(`the keys of the new config's issuers could not be fetched within ${timeout / 1000}s`)
      await sleep(20)
    }
  }

  #poolsInUse (): Set<Pool> {
    const keep = new Set<Pool>()
    for (const g of this.#generations) for (const p of g.gw.pools) keep.add(p)
    return keep
  }

  /**
   * Closes a replaced config's gateway (its last request is done), then the pools no config uses any
   * more: in the reload queue, so never while a reload is building a config that takes a pool again.
   */
  async #retire (g: Generation): Promise<void> {
    g.closed ??= (async () => {
      this.#generations.delete(g)
      await g.gw.close()
      const prune = this.#queue.then(async () => { await this.#pools.retain(this.#poolsInUse()) })
      this.#queue = prune.catch(() => {})
      await prune
    })()
    await g.closed
  }

  /** Listens on the public address; failures name `setting`. */
  async listen (host: string, port: number, setting = 'GATEWAY_PORT'): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      const onError = (err: Error): void => { reject(listenError(err, setting, host, port)) }
      this.server.once('error', onError)
      this.server.listen(port, host, () => {
        this.server.removeListener('error', onError)
        resolve()
      })
    })
  }

  /**
   * Stops: readiness 503 at once, then (after `drainDelay` when `signal` is SIGTERM) the listener closes, requests on
   * kept-alive connections get 503 with `Connection: close`, in-flight requests finish, every
   * config's gateway and the upstream pools close. Idempotent.
   */
  close (signal?: string): Promise<void> {
    this.#closing ??= (async () => {
      this.#stopping = true
      if (this.server.listening) await drain(this.#drain, signal, this.#opts.drainDelay ?? 0, this.log)
      await this.#queue
      for (const g of this.#generations) g.gw.beginShutdown()
      if (this.server.listening) {
        await new Promise<void>((resolve) => {
          this.server.close(() => { resolve() })
          this.server.closeIdleConnections()
        })
      }
      await Promise.all([...this.#generations].map(async (g) => { await g.gw.close() }))
      this.#generations.clear()
      await this.#pools.close()
      await this.admin.close()
      // the spans of the last requests go out before the process ends
      await this.#exporter?.shutdown()
    })()
    return this.#closing
  }
}
