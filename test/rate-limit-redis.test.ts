import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { Redis } from 'ioredis'
import Fastify from 'fastify'
import { performance } from 'node:perf_hooks'
import rateLimitPlugin from '@portcullis/rate-limit'
import { buildGateway } from '../gateway/server.js'
import { parseGatewayConfig } from '../gateway/config.js'
import { echoUpstream, rawRequest } from './helpers/upstream.js'
import { freePort } from './helpers/ports.js'
import { redisReachable } from './helpers/redis.js'
import { startGatewayProcess } from './helpers/gateway-process.js'

// This test stops its Redis on purpose, so it runs its own redis-server (never the shared one).
const haveRedisServer = spawnSync('redis-server', ['--version']).status === 0
if (!haveRedisServer && process.env.CI === 'true') throw new Error('redis-server is required when CI=true')
const skip = haveRedisServer ? false : 'redis-server binary not installed (required only when CI=true)'

async function startRedis (fixedPort?: number): Promise<{ url: string, stop: () => Promise<void> }> {
  const port = fixedPort ?? await freePort()
  const child: ChildProcess = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' })
  const url = `redis://127.0.0.1:${port}`
  for (let i = 0; i < 100 && !(await redisReachable(url)); i++) await new Promise((resolve) => setTimeout(resolve, 50))
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()))
  return {
    url,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM')
      await exited
    }
  }
}

async function metricValue (adminBase: string, name: string): Promise<number> {
  const body = await (await fetch(`${adminBase}/metrics`)).text()
  const m = new RegExp(`^${name}(?:\\{[^}]*\\})? (\\d+)`, 'm').exec(body)
  return m === null ? 0 : Number(m[1])
}

t.test('two gateway processes share one budget through Redis; Redis down -> fail open with the metric', { skip }, async (t) => {
  const redis = await startRedis()
  t.teardown(redis.stop)
  const up = await echoUpstream()
  t.teardown(() => up.close())
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-rl-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const cfg = join(dir, 'routes.json')
  writeFileSync(cfg, JSON.stringify({ rateLimit: { max: 10, timeWindow: '1m' }, routes: [{ prefix: '/p', upstream: up.url, auth: false }] }))
  const env = { GATEWAY_CONFIG: cfg, REDIS_URL: redis.url }
  const [g1, g2] = await Promise.all([startGatewayProcess(env), startGatewayProcess(env)])
  t.teardown(g1.kill)
  t.teardown(g2.kill)

  const statuses: number[] = []
  for (let i = 0; i < 30; i++) statuses.push((await rawRequest(i % 2 === 0 ? g1.base : g2.base, '/p/x')).status)
  const accepted = statuses.filter((s) => s === 200).length
  t.ok(accepted >= 10 && accepted <= 11, `accepted ${accepted} of 30 across two replicas with max 10`)
  t.equal(statuses.filter((s) => s === 429).length, 30 - accepted, 'the rest are 429')
  t.ok(statuses.slice(0, 10).every((s) => s === 200), 'the first ten pass whichever replica served them')

  const client = new Redis(redis.url)
  t.same(await client.keys('*'), ['portcullis-rl:*|ip:127.0.0.1'], 'one shared counter: default budget, keyed by client IP')
  client.disconnect()

  await redis.stop()
  const during = await rawRequest(g1.base, '/p/x')
  t.equal(during.status, 200, 'Redis down: fail open')
  t.ok(await metricValue(g1.admin, 'portcullis_rate_limit_store_errors_total') >= 1, 'store error counted')
  await g1.waitFor('rate-limit store failed')
  t.match(g1.output(), /"level":40.*rate-limit store failed/, 'a warning is logged')
})

t.test('fail-closed: Redis unreachable -> 503 in the error shape', { skip }, async (t) => {
  const deadPort = await freePort()
  const up = await echoUpstream()
  const gw = await buildGateway({
    config: parseGatewayConfig({ routes: [{ prefix: '/p', upstream: up.url, auth: false }] }, 'test'),
    redisUrl: `redis://127.0.0.1:${deadPort}`,
    rateLimitFailClosed: true,
    logger: false
  })
  t.teardown(async () => { await gw.close(); await up.close() })
  const r = await gw.app.inject({ url: '/p/x' })
  t.equal(r.statusCode, 503)
  t.equal(r.json().code, 'PORTCULLIS_RATE_LIMIT_STORE')
  t.equal(up.seen.length, 0)
  t.match((await gw.admin.inject({ url: '/metrics' })).body, /portcullis_rate_limit_store_errors_total [1-9]/)

  // Redis comes up later: the client reconnects in the background and requests pass again
  const redis = await startRedis(deadPort)
  t.teardown(redis.stop)
  let status = 0
  for (let i = 0; i < 100 && status !== 200; i++) {
    status = (await gw.app.inject({ url: '/p/x' })).statusCode
    if (status !== 200) await new Promise((resolve) => setTimeout(resolve, 100)) // real reconnect backoff, no clock to inject
  }
  t.equal(status, 200, 'recovered once Redis answered')
  t.equal(up.seen.length, 1)
})

t.test('a hung Redis (SIGSTOP) costs at most the command timeout per request, then nothing; limits come back after it resumes', { skip }, async (t) => {
  const port = await freePort()
  const child: ChildProcess = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' })
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()))
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) { child.kill('SIGCONT'); child.kill('SIGKILL') }
    await exited
  })
  const url = `redis://127.0.0.1:${port}`
  for (let i = 0; i < 100 && !(await redisReachable(url)); i++) await new Promise((resolve) => setTimeout(resolve, 50))
  const app = Fastify({ logger: false })
  await app.register(rateLimitPlugin, { max: 1000, timeWindow: 60_000, redis: url, redisCommandTimeout: 50, storeFailureThreshold: 3, storeRetryAfter: 400 })
  app.get('/x', async () => 'ok')
  await app.ready()
  t.teardown(() => app.close())
  const timed = async (): Promise<{ ms: number, limited: boolean }> => {
    const started = performance.now()
    const r = await app.inject({ url: '/x' })
    t.equal(r.statusCode, 200, 'fail open')
    return { ms: performance.now() - started, limited: r.headers['ratelimit-limit'] !== undefined }
  }
  t.ok((await timed()).limited, 'counted while Redis answers')

  child.kill('SIGSTOP')
  const hung = [] as number[]
  for (let i = 0; i < 3; i++) hung.push((await timed()).ms)
  t.ok(hung.every((ms) => ms >= 40 && ms < 1000), `each of the first 3 waits about the 50 ms timeout: ${hung.map((ms) => ms.toFixed(0)).join(', ')} ms`)
  const bypassed = [] as number[]
  for (let i = 0; i < 20; i++) bypassed.push((await timed()).ms)
  // the median, not the maximum: a loaded CI machine may stall any one request
  const median = [...bypassed].sort((a, b) => a - b)[10]!
  t.ok(median < 20, `then Redis is bypassed: median ${median.toFixed(1)} ms, below the 50 ms timeout`)

  child.kill('SIGCONT')
  await new Promise((resolve) => setTimeout(resolve, 500)) // past storeRetryAfter: the next request probes
  let back = false
  for (let i = 0; i < 20 && !back; i++) {
    back = (await timed()).limited
    if (!back) await new Promise((resolve) => setTimeout(resolve, 100))
  }
  t.ok(back, 'counting resumes without a restart')
})
