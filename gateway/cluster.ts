import cluster, { type Worker } from 'node:cluster'
import { fstatSync } from 'node:fs'
import { availableParallelism } from 'node:os'
import Fastify, { type FastifyInstance } from 'fastify'
import closeWithGrace from 'close-with-grace'
import type { Logger } from 'pino'
import { collectProcessMetrics, promClient } from '@portcullis/metrics'
import { ConfigError } from '../lib/errors.js'
import { envInt, type Env } from '../lib/env.js'
import { listenOn } from '../lib/listen.js'
import type { GatewayConfig } from './config.js'
import type { GatewayRuntime, ReloadResult, ReloadTrigger } from './runtime.js'

/** Most workers GATEWAY_WORKERS may ask for. */
export const MAX_WORKERS = 64
/** The environment variable a worker learns its slot (0 to N-1) from. */
export const WORKER_INDEX_ENV = 'PORTCULLIS_GATEWAY_WORKER'
/** How long the primary waits for a worker's answer (admin relay, metrics, reload) before it counts it as not answering. */
export const WORKER_ANSWER_TIMEOUT = 15_000 // ms
/** Bytes per write(2) of a worker's log lines when they share a pipe or socket: PIPE_BUF, so lines never interleave mid-line. */
export const WORKER_LOG_MAX_WRITE = 4096

/** GATEWAY_WORKERS: a whole number from 1 to MAX_WORKERS, or `auto` (the available cores). */
export function workersFromEnv (env: Env): number {
  if (env.GATEWAY_WORKERS?.trim() === 'auto') return Math.min(MAX_WORKERS, availableParallelism())
  return envInt(env, 'GATEWAY_WORKERS', 1, { min: 1, max: MAX_WORKERS })
}

/**
 * With more than one worker, in-memory rate-limit counters would be per worker: a caller spread over
 * N workers would get N times its limit. Such a config needs the shared Redis store (REDIS_URL).
 */
export function checkWorkers (workers: number, config: GatewayConfig, redisUrl: string | undefined): void {
  if (workers <= 1 || redisUrl !== undefined) return
  const limited = config.rateLimit !== false || config.routes.some((r) => r.rateLimit !== false && r.rateLimit !== undefined)
  if (limited) {
    throw new ConfigError('GATEWAY_WORKERS', `${workers} workers with rate limits need REDIS_URL: in-memory counters are per worker, so every caller's limit would be multiplied by ${workers} (set REDIS_URL, or GATEWAY_WORKERS=1, or rateLimit: false everywhere in the route file)`)
  }
}

/** True in a process the gateway's primary started. */
export function isGatewayWorker (): boolean {
  return cluster.isWorker && process.env[WORKER_INDEX_ENV] !== undefined
}

/** The write size a worker's log destination uses: PIPE_BUF when its stdout is a pipe or a socket (shared by every worker), else unlimited. */
export function workerLogMaxWrite (): number | undefined {
  try {
    const st = fstatSync(1)
    return st.isFIFO() || st.isSocket() ? WORKER_LOG_MAX_WRITE : undefined
  } catch {
    return undefined
  }
}

// ---- messages between the primary and its workers (node:cluster's IPC channel)

interface AskInject { type: 'portcullis:ask', id: number, what: 'inject', method: 'GET' | 'POST', url: string }
interface AskMetrics { type: 'portcullis:ask', id: number, what: 'metrics' }
interface AskReload { type: 'portcullis:ask', id: number, what: 'reload', trigger: ReloadTrigger }
type Ask = AskInject | AskMetrics | AskReload
interface Answer { type: 'portcullis:answer', id: number, value?: unknown, error?: string }
interface Injected { statusCode: number, headers: Record<string, string>, body: string }

/**
 * The worker's side: answers the primary's requests with the runtime's own admin app (injected, not
 * listening), its metric registries (as JSON, for prom-client's aggregator) and its reload. Tells
 * the primary when it listens; stops (SIGTERM to itself: the usual drain) when the primary is gone.
 */
export function serveWorker (rt: GatewayRuntime, stop: (signal: string) => void): void {
  const answer = (id: number, value: unknown, error?: string): void => {
    if (process.connected) process.send!({ type: 'portcullis:answer', id, value, error } satisfies Answer)
  }
  process.on('message', (m: Ask | { type: 'portcullis:stop', signal: string }) => {
    if (m?.type === 'portcullis:stop') {
      stop(m.signal)
      return
    }
    if (m?.type !== 'portcullis:ask') return
    const run = async (): Promise<unknown> => {
      if (m.what === 'metrics') return await Promise.all(rt.metricsRegistries().map(async (r) => await r.getMetricsAsJSON()))
      if (m.what === 'reload') return await rt.reload(m.trigger)
      const res = await rt.admin.inject({ method: m.method, url: m.url })
      const headers: Record<string, string> = {}
      for (const [k, v] of Object.entries(res.headers)) if (v !== undefined && k !== 'content-length' && k !== 'connection' && k !== 'date' && k !== 'keep-alive') headers[k] = String(v)
      return { statusCode: res.statusCode, headers, body: res.body } satisfies Injected
    }
    run().then((v) => { answer(m.id, v) }, (err: unknown) => { answer(m.id, undefined, err instanceof Error ? err.message : String(err)) })
  })
  process.once('disconnect', () => { stop('SIGTERM') })
  process.send!({ type: 'portcullis:listening' })
}

// ---- the primary

export interface PrimaryOptions {
  workers: number
  adminHost: string
  adminPort: number
  /** Seconds SIGTERM waits before the listeners close (each worker's own GATEWAY_DRAIN_DELAY). */
  drainDelay: number
  /** Seconds each worker may take to drain after that. */
  shutdownGrace: number
  logger: Logger
}

interface Slot {
  index: number
  worker: Worker | undefined
  listening: boolean
  /** Replacements in a row that died before listening (backoff). */
  failures: number
}

/**
 * `portcullis gateway` with GATEWAY_WORKERS > 1: forks the workers (each a whole gateway sharing the
 * public port through node:cluster) and serves the admin listener for all of them: `/metrics` is one
 * scrape aggregated over the workers (prom-client's AggregatorRegistry) plus the primary's own
 * metrics; `/health/ready` is ready when every listening worker is; `/config`, `/status` and
 * `/status.json` come from one worker; `POST /config/reload` and SIGHUP reload every worker. A worker
 * that dies is replaced (after 0.1 s, doubling while replacements die before listening, up to 30 s).
 * SIGTERM/SIGINT pass to every worker (each drains its own requests); the primary exits when they have.
 */
export async function runPrimary (opts: PrimaryOptions): Promise<number> {
  const log = opts.logger
  const registry = new promClient.Registry()
  collectProcessMetrics(registry)
  const workersGauge = new promClient.Gauge({ name: 'portcullis_gateway_workers', help: 'Gateway worker processes listening on the public port', registers: [registry] })
  const wantedGauge = new promClient.Gauge({ name: 'portcullis_gateway_workers_configured', help: 'Gateway worker processes configured (GATEWAY_WORKERS)', registers: [registry] })
  const restarts = new promClient.Counter({ name: 'portcullis_gateway_worker_restarts_total', help: 'Gateway workers replaced after they died', registers: [registry] })
  restarts.inc(0)
  wantedGauge.set(opts.workers)

  const slots: Slot[] = Array.from({ length: opts.workers }, (_, index) => ({ index, worker: undefined, listening: false, failures: 0 }))
  let stopping = false
  let booted = false
  let nextId = 1
  const pending = new Map<number, { resolve: (v: unknown) => void, reject: (e: Error) => void, timer: NodeJS.Timeout }>()
  const countListening = (): void => { workersGauge.set(slots.filter((s) => s.listening).length) }

  let bootFailed: (err: Error) => void = () => {}
  let bootDone: () => void = () => {}
  const boot = new Promise<void>((resolve, reject) => { bootDone = resolve; bootFailed = reject })

  const fork = (slot: Slot): void => {
    const worker = cluster.fork({ [WORKER_INDEX_ENV]: String(slot.index) })
    slot.worker = worker
    slot.listening = false
    worker.on('message', (m: { type?: string, id?: number, value?: unknown, error?: string }) => {
      if (m?.type === 'portcullis:listening') {
        slot.listening = true
        slot.failures = 0
        countListening()
        log.info({ worker: slot.index, pid: worker.process.pid }, 'gateway worker listening')
        if (!booted && slots.every((s) => s.listening)) {
          booted = true
          bootDone()
        }
      } else if (m?.type === 'portcullis:answer' && m.id !== undefined) {
        const p = pending.get(m.id)
        if (p === undefined) return
        pending.delete(m.id)
        clearTimeout(p.timer)
        if (m.error !== undefined) p.reject(new Error(m.error))
        else p.resolve(m.value)
      }
    })
    worker.on('exit', (code, signal) => {
      const wasListening = slot.listening
      if (slot.worker === worker) {
        slot.worker = undefined
        slot.listening = false
      }
      countListening()
      if (stopping) return
      if (!booted) {
        bootFailed(new Error(`gateway worker ${slot.index} exited (${signal ?? `code ${code}`}) before it listened`))
        return
      }
      restarts.inc()
      if (!wasListening) slot.failures++
      const delay = Math.min(30_000, 100 * 2 ** slot.failures)
      log.error({ worker: slot.index, pid: worker.process.pid, code, signal, restartIn: delay / 1000 }, 'gateway worker died: starting another')
      setTimeout(() => { if (!stopping) fork(slot) }, delay).unref()
    })
  }

  /** Sends a question to one worker; rejects when it does not answer within WORKER_ANSWER_TIMEOUT or is gone. */
  const ask = (worker: Worker, q: Omit<AskInject, 'type' | 'id'> | Omit<AskMetrics, 'type' | 'id'> | Omit<AskReload, 'type' | 'id'>): Promise<unknown> => {
    const id = nextId++
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => { pending.delete(id); reject(new Error(`worker ${worker.id} did not answer within ${WORKER_ANSWER_TIMEOUT / 1000}s`)) }, WORKER_ANSWER_TIMEOUT)
      pending.set(id, { resolve, reject, timer })
      const gone = (): void => { if (pending.delete(id)) { clearTimeout(timer); reject(new Error(`worker ${worker.id} exited`)) } }
      worker.once('exit', gone)
      try {
        worker.send({ type: 'portcullis:ask', id, ...q }, (err) => { if (err !== null && err !== undefined) gone() })
      } catch {
        gone()
      }
    })
  }
  const listening = (): Array<{ slot: Slot, worker: Worker }> => slots.flatMap((s) => s.listening && s.worker !== undefined && s.worker.isConnected() ? [{ slot: s, worker: s.worker }] : [])

  const reloadAll = async (trigger: ReloadTrigger): Promise<PrimaryReload> => await reloadEvery(listening(), ask, trigger, log)
  const admin = buildPrimaryAdmin({ registry, stopping: () => stopping, listening, ask, reload: reloadAll })

  const onHangup = (): void => { void reloadAll('SIGHUP') }
  const shutdown = async (signal: string | undefined): Promise<void> => {
    stopping = true
    process.removeListener('SIGHUP', onHangup)
    const alive = slots.flatMap((s) => s.worker !== undefined && s.worker.process.exitCode === null && s.worker.process.signalCode === null ? [{ w: s.worker, listening: s.listening }] : [])
    log.info({ signal, workers: alive.length }, 'shutting down: every worker drains its requests')
    await Promise.all(alive.map(async ({ w, listening }) => {
      const exited = new Promise<void>((resolve) => { if (w.process.exitCode !== null || w.process.signalCode !== null) resolve(); else w.once('exit', () => { resolve() }) })
      // asked over the channel, so a worker that got the signal itself too (a service manager may
      // signal the whole group) drains once instead of taking the second signal as "exit now"; a
      // worker still starting does not listen to the channel yet, so it gets the signal
      const sig = signal ?? 'SIGTERM'
      try {
        if (listening && w.isConnected()) w.send({ type: 'portcullis:stop', signal: sig })
        else w.process.kill(sig as NodeJS.Signals)
      } catch {
        w.process.kill(sig as NodeJS.Signals)
      }
      await exited
    }))
    for (const p of pending.values()) clearTimeout(p.timer)
    await admin.close()
    log.info('gateway stopped')
  }

  // the workers' own grace runs first; the primary's is that plus a margin, then it exits anyway
  const grace = closeWithGrace({ delay: (opts.drainDelay + opts.shutdownGrace) * 1000 + 5000, skip: ['SIGHUP'], logger: { error: (m: unknown) => log.error(m) } }, async ({ signal, err }) => {
    if (err !== undefined) log.error({ err }, 'fatal error, shutting down')
    await shutdown(signal)
  })
  try {
    await listenOn(admin, opts.adminHost, opts.adminPort, 'GATEWAY_ADMIN_PORT')
    for (const s of slots) fork(s)
    await boot
  } catch (err) {
    grace.uninstall()
    await shutdown(undefined)
    throw err
  }
  process.on('SIGHUP', onHangup)
  return 0
}

export interface PrimaryReload extends ReloadResult {
  /** Each worker's own result. */
  workers: Array<{ worker: number } & Partial<ReloadResult>>
}

async function reloadEvery (workers: Array<{ slot: Slot, worker: Worker }>, ask: (w: Worker, q: Omit<AskReload, 'type' | 'id'>) => Promise<unknown>, trigger: ReloadTrigger, log: Logger): Promise<PrimaryReload> {
  const each = await Promise.all(workers.map(async ({ slot, worker }): Promise<{ worker: number } & Partial<ReloadResult>> => {
    try {
      return { worker: slot.index, ...(await ask(worker, { what: 'reload', trigger }) as ReloadResult) }
    } catch (err) {
      return { worker: slot.index, result: 'failure' as const, error: (err as Error).message }
    }
  }))
  const failed = each.find((r) => r.result === 'failure')
  const result = failed !== undefined || each.length === 0 ? 'failure' : each.every((r) => r.result === 'unchanged') ? 'unchanged' : 'success'
  const version = each.find((r) => r.version !== undefined)?.version ?? ''
  if (failed !== undefined) log.error({ trigger, workers: each }, 'config reload failed in a worker')
  return { result, version, ...(failed?.error !== undefined ? { error: failed.error } : each.length === 0 ? { error: 'no worker is listening' } : {}), workers: each }
}

interface PrimaryAdminOptions {
  registry: promClient.Registry
  reload: (trigger: ReloadTrigger) => Promise<PrimaryReload>
  stopping: () => boolean
  listening: () => Array<{ slot: Slot, worker: Worker }>
  ask: (w: Worker, q: Omit<AskInject, 'type' | 'id'> | Omit<AskMetrics, 'type' | 'id'>) => Promise<unknown>
}

function buildPrimaryAdmin (o: PrimaryAdminOptions): FastifyInstance {
  const app = Fastify({ logger: false })
  app.get('/health/live', { logLevel: 'warn' }, async () => ({ status: 'ok', workers: o.listening().length }))
  app.get('/health/ready', { logLevel: 'warn' }, async (_req, reply) => {
    if (o.stopping()) return await reply.code(503).send({ status: 'not_ready', reason: 'draining: the gateway is shutting down' })
    const ws = o.listening()
    if (ws.length === 0) return await reply.code(503).send({ status: 'not_ready', reason: 'no worker is listening' })
    const answers = await Promise.all(ws.map(async ({ slot, worker }) => {
      try {
        const r = await o.ask(worker, { what: 'inject', method: 'GET', url: '/health/ready' }) as Injected
        return r.statusCode === 200 ? undefined : `worker ${slot.index}: ${(JSON.parse(r.body) as { reason?: string }).reason ?? 'not ready'}`
      } catch (err) {
        return `worker ${slot.index}: ${(err as Error).message}`
      }
    }))
    const not = answers.filter((a) => a !== undefined)
    if (not.length > 0) return await reply.code(503).send({ status: 'not_ready', reason: not.join('; ') })
    return { status: 'ready', workers: ws.length }
  })
  app.get('/metrics', { logLevel: 'warn' }, async (_req, reply) => {
    const ws = o.listening()
    const each = await Promise.all(ws.map(async ({ worker }) => {
      try {
        return await o.ask(worker, { what: 'metrics' }) as object[][]
      } catch {
        return [] // a worker that went away meanwhile: the scrape has the others
      }
    }))
    const all = [await o.registry.getMetricsAsJSON(), ...each.flat()]
    const aggregated = promClient.AggregatorRegistry.aggregate(all)
    reply.type(aggregated.contentType)
    return await aggregated.metrics()
  })
  // the config, the operator page and its document: from one worker (they all run the same file)
  for (const url of ['/config', '/status', '/status.json']) {
    app.get(url, { logLevel: 'warn' }, async (_req, reply) => {
      const w = o.listening()[0]
      if (w === undefined) return await reply.code(503).send({ error: 'no worker is listening' })
      const r = await o.ask(w.worker, { what: 'inject', method: 'GET', url }) as Injected
      return await reply.code(r.statusCode).headers(r.headers).send(r.body)
    })
  }
  app.post('/config/reload', { logLevel: 'warn' }, async (_req, reply) => {
    const r = await o.reload('admin')
    return await reply.code(r.result === 'failure' ? 422 : 200).send(r)
  })
  return app
}
