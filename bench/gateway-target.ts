import { createServer } from 'node:http'
import { getHeapSpaceStatistics } from 'node:v8'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import Fastify from 'fastify'
import httpProxy from '@fastify/http-proxy'
import { Pool } from 'undici'
import cluster from 'node:cluster'
import { createGateway, run as runGateway, settingsFromEnv } from '../gateway/main.js'
import { MEMORY_TUNING_FLAGS } from '../gateway/tuning.js'
import { jwksOptionsFromEnv } from '../lib/jwks-env.js'

/**
 * One process under test for bench/gateway.bench.ts, started as a child with an IPC channel:
 *   upstream                 a tiny JSON server
 *   bare <upstream>          Fastify + one @fastify/http-proxy registration, nothing else
 *   lean <upstream>          Fastify + one route streaming through undici's Pool.request, nothing else
 *   gateway <upstream> <iss> the full gateway, built by `createGateway` from env settings and a route
 *                            file exactly as `portcullis gateway` does (V8 memory tuning and logger
 *                            included); BENCH_FEATURES switches parts off (`logs` = LOG_LEVEL warn,
 *                            `tracing` = no tracing plugin at all; OTEL_* variables switch export on;
 *                            BENCH_REVOCATIONS_URL: the issuer's revocation feed),
 *                            BENCH_TOKEN_CACHE=<n> sets the verified-token cache size (0: no cache),
 *                            BENCH_ROUTES=<n> adds n-1 routes before /api, BENCH_TRUST_PROXY=1 takes
 *                            the caller's address from X-Forwarded-For, /api without auth (distinct
 *                            callers without tokens),
 *                            BENCH_RATE_LIMIT=off: no rate limit in the route file
 *   cli <upstream> <iss>     `portcullis gateway` itself (its `run`, GATEWAY_WORKERS from the env:
 *                            with more than 1, this process is the primary and the workers run this
 *                            file again), on BENCH_PORT; sends { port, pids } once every worker listens
 * Sends { port, v8 } when listening (v8: the flags in effect). Its stdout (the info logs) goes to /dev/null.
 */
const [mode, upstream, issuer] = process.argv.slice(2)
let v8Flags: string[] = process.execArgv

/** The route file of a gateway under test: one issuer, a limit no load reaches, /api to the upstream (after BENCH_ROUTES - 1 others). */
function routeDocument (): unknown {
  const extra = Math.max(0, Number(process.env.BENCH_ROUTES ?? 1) - 1)
  return {
    issuers: [{ issuer: issuer!, audience: 'portcullis', ...(process.env.BENCH_REVOCATIONS_URL !== undefined ? { revocations: process.env.BENCH_REVOCATIONS_URL } : {}) }],
    rateLimit: process.env.BENCH_RATE_LIMIT === 'off' ? false : { max: 1_000_000_000, timeWindow: '1m' },
    ...(process.env.BENCH_TRUST_PROXY === '1' ? { trustProxy: true } : {}),
    routes: [
      ...Array.from({ length: extra }, (_, i) => ({ name: `svc-${i}`, prefix: `/svc-${i}`, upstream: upstream!, ...(i % 3 === 0 && process.env.BENCH_RATE_LIMIT !== 'off' ? { rateLimit: { max: 1000, timeWindow: '1m' } } : {}) })),
      // with BENCH_TRUST_PROXY the caller is its X-Forwarded-For address: no token, or its subject would be the caller
      { prefix: '/api', upstream: upstream!, ...(process.env.BENCH_TRUST_PROXY === '1' ? { auth: false } : {}) }
    ]
  }
}

async function main (): Promise<number> {
  if (mode === 'upstream') {
    const body = JSON.stringify({ ok: true, items: [1, 2, 3] })
    const srv = createServer((_req, res) => {
      res.setHeader('content-type', 'application/json')
      res.end(body)
    })
    srv.keepAliveTimeout = 60_000
    await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve))
    return (srv.address() as { port: number }).port
  }
  if (mode === 'lean') {
    // The least a Fastify route can do to proxy: stream the upstream's answer through undici's public
    // Pool.request, forwarding the method, path and headers as they come (no hygiene, no timeouts).
    const pool = new Pool(upstream!, { connections: 64, pipelining: 1 })
    const app = Fastify({ logger: false })
    app.removeAllContentTypeParsers()
    app.addContentTypeParser('*', (_req, payload, done) => { done(null, payload) })
    app.all('/api/*', async (req, reply) => {
      const headers = { ...req.headers }
      delete headers.host
      delete headers.connection
      const res = await pool.request({ method: req.method as 'GET', path: req.url.slice(4) || '/', headers, body: req.method === 'GET' || req.method === 'HEAD' ? null : req.raw })
      delete res.headers.connection
      delete res.headers['keep-alive']
      delete res.headers['transfer-encoding']
      return await reply.code(res.statusCode).headers(res.headers).send(res.body)
    })
    await app.listen({ port: 0, host: '127.0.0.1' })
    return (app.server.address() as { port: number }).port
  }
  if (mode === 'bare') {
    const app = Fastify({ logger: false })
    await app.register(httpProxy, { upstream: upstream!, prefix: '/api' })
    await app.listen({ port: 0, host: '127.0.0.1' })
    return (app.server.address() as { port: number }).port
  }
  if (mode === 'cli') return await cli()
  const off = new Set((process.env.BENCH_FEATURES ?? '').split(',').filter((s) => s !== ''))
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-gw-bench-'))
  const routeFile = join(dir, 'routes.json')
  writeFileSync(routeFile, JSON.stringify(routeDocument()))
  if (off.has('logs')) process.env.LOG_LEVEL = 'warn'
  const settings = settingsFromEnv({ ...process.env, GATEWAY_CONFIG: routeFile, GATEWAY_PORT: '0' })
  const { gw } = await createGateway(settings, process.env, {
    features: { rateLimit: !off.has('rateLimit'), metrics: !off.has('metrics'), auth: !off.has('auth'), tracing: !off.has('tracing') },
    ...(process.env.BENCH_TOKEN_CACHE !== undefined ? { auth: { ...jwksOptionsFromEnv(process.env), tokenCacheMax: Number(process.env.BENCH_TOKEN_CACHE) } } : {})
  })
  rmSync(dir, { recursive: true, force: true })
  v8Flags = [...process.execArgv, ...(settings.memoryTuning ? MEMORY_TUNING_FLAGS.map((f) => `${f} (set at start)`) : [])]
  await gw.app.listen({ port: 0, host: '127.0.0.1' })
  if (!off.has('auth')) {
    await gw.app.jwksAuth.refresh()
    // and the revocation feed caught up, when there is one
    while (!gw.app.jwksAuth.isReady()) await new Promise((resolve) => setTimeout(resolve, 20))
  }
  return (gw.app.server.address() as { port: number }).port
}

/** `portcullis gateway` as users run it, with GATEWAY_WORKERS from the environment. */
async function cli (): Promise<number> {
  const worker = cluster.isWorker
  if (!worker) {
    const dir = mkdtempSync(join(tmpdir(), 'portcullis-gw-bench-'))
    process.env.GATEWAY_CONFIG = join(dir, 'routes.json')
    writeFileSync(process.env.GATEWAY_CONFIG, JSON.stringify(routeDocument()))
    process.on('exit', () => { rmSync(dir, { recursive: true, force: true }) })
  }
  process.env.GATEWAY_PORT = process.env.BENCH_PORT
  process.env.GATEWAY_ADMIN_PORT = process.env.BENCH_ADMIN_PORT
  process.env.GATEWAY_DRAIN_DELAY = '0'
  await runGateway([])
  if (worker) return new Promise<number>(() => {}) // a worker answers its primary, not the bench
  return Number(process.env.BENCH_PORT)
}

// 'mem': answer with process.memoryUsage() after a full GC when --expose-gc is on (live heap vs RSS)
process.on('message', (m) => {
  if (m !== 'mem') return
  const gc = (globalThis as { gc?: () => void }).gc
  if (gc !== undefined) gc()
  const spaces = Object.fromEntries(getHeapSpaceStatistics().map((x) => [x.space_name, Math.round(x.physical_space_size / 1048576)]))
  process.send!({ mem: process.memoryUsage(), spaces })
})

main().then((port) => process.send!({ port, v8: v8Flags, pids: cluster.isPrimary ? Object.values(cluster.workers ?? {}).map((w) => w!.process.pid) : [] }), (err: unknown) => {
  console.error(err)
  process.exit(1)
})
// exit normally (so --cpu-prof can write its profile) when the bench ends
if (mode !== 'cli') {
  process.on('SIGTERM', () => process.exit(0))
  process.on('disconnect', () => process.exit(0))
} else if (!cluster.isWorker) {
  process.on('disconnect', () => { process.kill(process.pid, 'SIGTERM') }) // the gateway's own drain
}
