import t, { type Test } from 'tap'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { spawn, spawnSync } from 'node:child_process'
import { once } from 'node:events'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import { request } from 'undici'
import { workersFromEnv, checkWorkers } from '../gateway/cluster.js'
import { parseGatewayConfig } from '../gateway/config.js'
import { echoUpstream, type EchoUpstream } from './helpers/upstream.js'
import { startGatewayProcess, type GatewayProcess } from './helpers/gateway-process.js'
import { redisSkip, TEST_REDIS_URL } from './helpers/redis.js'
import { freePorts } from './helpers/ports.js'
import { gone } from './helpers/stack.js'

/**
 * GATEWAY_WORKERS > 1: `portcullis gateway` as a primary with node:cluster workers sharing the
 * public port. Each request goes on a connection of its own (`connection: close`), so the kernel
 * spreads them over the workers; the x-request-id the upstream receives starts with the serving
 * worker's own prefix, which tells the workers apart.
 */

// before any test runs: the refusal test below blocks the event loop (spawnSync), which would time a PING out
const redisSkipReason = await redisSkip()

function routeFile (t: Test, doc: unknown): string {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-workers-'))
  t.teardown(() => { rmSync(dir, { recursive: true, force: true }) })
  const file = join(dir, 'routes.json')
  writeFileSync(file, JSON.stringify(doc))
  return file
}

async function get (base: string, path: string): Promise<{ status: number, body: string }> {
  const r = await request(`${base}${path}`, { headers: { connection: 'close' } })
  return { status: r.statusCode, body: await r.body.text() }
}

/** The serving worker of each request the upstream saw: its request-id prefix. */
function workersSeen (up: EchoUpstream): Set<string> {
  return new Set(up.seen.map((r) => String(r.headers['x-request-id']).replace(/-[0-9a-z]+$/, '')))
}

function workerPids (gw: GatewayProcess): Map<number, number> {
  const pids = new Map<number, number>()
  for (const line of gw.output().split('\n')) {
    if (!line.includes('"gateway worker listening"')) continue
    const l = JSON.parse(line) as { worker: number, pid: number }
    pids.set(l.worker, l.pid) // the last one per slot
  }
  return pids
}

const alive = (pid: number): boolean => !gone(pid)

function metric (text: string, line: RegExp): number | undefined {
  const m = text.split('\n').find((l) => line.test(l))
  return m === undefined ? undefined : Number(m.slice(m.lastIndexOf(' ') + 1))
}

t.test('GATEWAY_WORKERS: auto, a number, or a clear error naming it', async (t) => {
  t.equal(workersFromEnv({}), 1, 'default: 1')
  t.equal(workersFromEnv({ GATEWAY_WORKERS: '3' }), 3)
  t.ok(workersFromEnv({ GATEWAY_WORKERS: 'auto' }) >= 1, 'auto: the available cores')
  for (const bad of ['0', '-1', 'two', '1.5', '65']) {
    t.throws(() => workersFromEnv({ GATEWAY_WORKERS: bad }), /GATEWAY_WORKERS/, `"${bad}" refused`)
  }
  const limited = parseGatewayConfig({ routes: [{ prefix: '/a', upstream: 'http://127.0.0.1:1', auth: false }] }, 'routes.json')
  const unlimited = parseGatewayConfig({ rateLimit: false, routes: [{ prefix: '/a', upstream: 'http://127.0.0.1:1', auth: false }] }, 'routes.json')
  const routeLimited = parseGatewayConfig({ rateLimit: false, routes: [{ prefix: '/a', upstream: 'http://127.0.0.1:1', auth: false, rateLimit: { max: 5 } }] }, 'routes.json')
  t.throws(() => checkWorkers(2, limited, undefined), /GATEWAY_WORKERS.*REDIS_URL/, 'the default limit with 2 workers needs Redis')
  t.throws(() => checkWorkers(2, routeLimited, undefined), /REDIS_URL/, 'a route limit too')
  t.doesNotThrow(() => checkWorkers(2, limited, 'redis://127.0.0.1:6379'), 'with Redis')
  t.doesNotThrow(() => checkWorkers(2, unlimited, undefined), 'no limit at all')
  t.doesNotThrow(() => checkWorkers(1, limited, undefined), 'one worker: in memory is exact')
})

t.test('2 workers with in-memory rate limits: the start is refused naming GATEWAY_WORKERS and REDIS_URL; --check says the same', async (t) => {
  const file = routeFile(t, { routes: [{ prefix: '/a', upstream: 'http://127.0.0.1:1', auth: false }] })
  const env = { ...process.env, GATEWAY_WORKERS: '2', GATEWAY_CONFIG: file, GATEWAY_PORT: '0', GATEWAY_ADMIN_PORT: '0', REDIS_URL: '' }
  const run = spawnSync(process.execPath, ['--import', 'tsx', 'cli/portcullis.ts', 'gateway'], { env, encoding: 'utf8', timeout: 60_000 })
  t.equal(run.status, 1, 'exit 1')
  t.match(run.stderr, /GATEWAY_WORKERS.*REDIS_URL/, run.stderr)
  t.notMatch(run.stdout, /gateway worker listening/, 'no worker started')
  const check = spawnSync(process.execPath, ['--import', 'tsx', 'cli/portcullis.ts', 'gateway', '--check'], { env, encoding: 'utf8', timeout: 60_000 })
  t.equal(check.status, 1)
  t.match(check.stdout + check.stderr, /GATEWAY_WORKERS/)
})

t.test('a worker that cannot start stops the boot: exit 1 naming the setting, no process left', async (t) => {
  const busy = createServer()
  await new Promise<void>((resolve) => busy.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { busy.close() })
  const port = (busy.address() as AddressInfo).port
  const [adminPort] = await freePorts(1) as [number]
  const file = routeFile(t, { rateLimit: false, routes: [{ prefix: '/a', upstream: 'http://127.0.0.1:1', auth: false }] })
  const child = spawn(process.execPath, ['--import', 'tsx', 'cli/portcullis.ts', 'gateway'], {
    env: { ...process.env, GATEWAY_WORKERS: '2', GATEWAY_CONFIG: file, GATEWAY_PORT: String(port), GATEWAY_ADMIN_PORT: String(adminPort) },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let out = ''
  child.stdout.on('data', (d: Buffer) => { out += d.toString() })
  child.stderr.on('data', (d: Buffer) => { out += d.toString() })
  const timer = setTimeout(() => { child.kill('SIGKILL') }, 60_000)
  const [code] = await once(child, 'exit') as [number | null]
  clearTimeout(timer)
  t.equal(code, 1, 'exit 1')
  t.match(out, /GATEWAY_PORT/, 'the error names the setting')
  t.match(out, /gateway worker \d exited .* before it listened/, 'the primary says which worker')
  t.notMatch(out, /"gateway ready"/)
  const pids = [...out.matchAll(/"pid":(\d+)/g)].map((m) => Number(m[1]))
  await sleep(500)
  t.same(pids.filter(alive), [], 'no process left')
})

t.test('2 workers: one aggregated scrape, reload reaches both, a killed worker is replaced, SIGTERM drains both', async (t) => {
  const up = await echoUpstream('up')
  t.teardown(() => up.close())
  const doc = { rateLimit: false, routes: [{ name: 'a', prefix: '/a', upstream: up.url, auth: false }] }
  const file = routeFile(t, doc)
  const gw = await startGatewayProcess({ GATEWAY_WORKERS: '2', GATEWAY_CONFIG: file, GATEWAY_SHUTDOWN_GRACE: '20' })
  t.teardown(() => {
    gw.kill()
    for (const pid of workerPids(gw).values()) if (alive(pid)) process.kill(pid, 'SIGKILL')
  })
  const first = workerPids(gw)
  t.equal(first.size, 2, 'two workers listening')

  // traffic over fresh connections reaches both workers
  const N = 40
  for (let i = 0; i < N; i++) t.equal((await get(gw.base, `/a/${i}`)).status, 200)
  t.equal(workersSeen(up).size, 2, 'both workers served requests')

  // one scrape on the primary's admin port, the workers' counts summed
  const scrape = await request(`${gw.admin}/metrics`)
  t.equal(scrape.statusCode, 200)
  const text = await scrape.body.text()
  t.equal(metric(text, /^http_request_duration_seconds_count\{.*route="\/a\/\*".*status_code="200"/), N, `request count summed over the workers: ${N}`)
  t.equal(metric(text, /^portcullis_gateway_workers /), 2, 'workers listening: 2')
  t.equal(metric(text, /^portcullis_config_info\{/), 1, 'config info: 1 (max over the workers, not a sum)')
  t.equal(text.split('\n').filter((l) => l.startsWith('# TYPE http_request_duration_seconds ')).length, 1, 'each metric once')
  const ready = await request(`${gw.admin}/health/ready`)
  t.same(await ready.body.json(), { status: 'ready', workers: 2 }, 'ready: both workers')
  const cfg = await request(`${gw.admin}/config`)
  t.equal(cfg.statusCode, 200)
  const version = (await cfg.body.json() as { version: string }).version

  // a reload reaches every worker: the new route is served whichever worker answers
  writeFileSync(file, JSON.stringify({ ...doc, routes: [...doc.routes, { name: 'b', prefix: '/b', upstream: up.url, auth: false }] }))
  const rl = await request(`${gw.admin}/config/reload`, { method: 'POST' })
  const res = await rl.body.json() as { result: string, version: string, workers: Array<{ worker: number, result: string, version: string }> }
  t.equal(rl.statusCode, 200)
  t.equal(res.result, 'success')
  t.not(res.version, version, 'a new version')
  t.same(res.workers.map((w) => [w.worker, w.result, w.version]).sort(), [[0, 'success', res.version], [1, 'success', res.version]], 'each worker reloaded')
  up.seen.length = 0
  for (let i = 0; i < 20; i++) t.equal((await get(gw.base, `/b/${i}`)).status, 200, 'the new route on every worker')
  t.equal(workersSeen(up).size, 2, 'both workers served the new route')
  // a broken file: 422, every worker keeps the running config
  writeFileSync(file, '{ "routes": [ { "prefix": "nope" } ] }')
  const bad = await request(`${gw.admin}/config/reload`, { method: 'POST' })
  t.equal(bad.statusCode, 422)
  const badRes = await bad.body.json() as { result: string, version: string }
  t.equal(badRes.result, 'failure')
  t.equal(badRes.version, res.version, 'the running version stays')
  writeFileSync(file, JSON.stringify({ ...doc, routes: [...doc.routes, { name: 'b', prefix: '/b', upstream: up.url, auth: false }] }))

  // SIGKILL one worker: the primary starts another in its slot; requests keep being answered. A
  // connection node:cluster was handing to the worker as it died is lost with it (round-robin: it
  // waits for the client's timeout, docs/operations.md): at most one here, each request on its own.
  const victim = first.get(1)!
  process.kill(victim, 'SIGKILL')
  const deadline = Date.now() + 30_000
  let answered = 0
  let lost = 0
  while ((workerPids(gw).get(1) === victim || answered < 5) && Date.now() < deadline) {
    try {
      const r = await request(`${gw.base}/a/during`, { headers: { connection: 'close' }, headersTimeout: 3000 })
      await r.body.text()
      if (r.statusCode === 200) answered++
    } catch {
      lost++
    }
    await sleep(50)
  }
  t.ok(answered >= 5, `answered while the worker was replaced and after: ${answered}`)
  t.ok(lost <= 1, `connections lost with the killed worker: ${lost}`)
  const replaced = workerPids(gw).get(1)!
  t.not(replaced, victim, `worker 1 replaced (pid ${victim} -> ${replaced})`)
  t.ok(alive(replaced), 'the replacement runs')
  t.match(gw.output(), /"gateway worker died: starting another"/, 'the death is logged')
  const after = await (await request(`${gw.admin}/metrics`)).body.text()
  t.equal(metric(after, /^portcullis_gateway_worker_restarts_total /), 1, 'restarts counted')
  up.seen.length = 0
  for (let i = 0; i < 20; i++) t.equal((await get(gw.base, `/b/${i}`)).status, 200, 'the replacement runs the reloaded config')
  t.equal(workersSeen(up).size, 2, 'both workers serve again')

  // SIGTERM: requests in flight on both workers finish, then every process exits
  up.handle((req, r) => { setTimeout(() => { r.setHeader('content-type', 'application/json'); r.end(JSON.stringify({ url: req.url })) }, 1500) })
  up.seen.length = 0
  const inflight = Array.from({ length: 8 }, async (_, i) => await get(gw.base, `/a/slow-${i}`))
  while (up.seen.length < 8) await sleep(20)
  t.equal(workersSeen(up).size, 2, 'requests in flight on both workers')
  const pids = [...workerPids(gw).values()]
  gw.child.kill('SIGTERM')
  const answers = await Promise.all(inflight)
  t.same(answers.map((a) => a.status), Array(8).fill(200), 'every request in flight answered 200')
  t.equal(await gw.exited, 0, 'the primary exits 0')
  t.same(pids.filter(alive), [], 'no worker left running')
  t.match(gw.output(), /"gateway worker stopped"[\s\S]*"gateway worker stopped"[\s\S]*"gateway stopped"/, 'both workers stopped, then the primary')
})

t.test('2 workers sharing Redis: a caller\'s limit is exact across the workers, not multiplied', { skip: redisSkipReason }, async (t) => {
  const up = await echoUpstream('up')
  t.teardown(() => up.close())
  // a route name of its own: its counters cannot meet another test's in the shared Redis
  const name = `workers-${process.pid}-${Date.now()}`
  const file = routeFile(t, { rateLimit: false, routes: [{ name, prefix: `/${name}`, upstream: up.url, auth: false, rateLimit: { max: 10, timeWindow: '1m' } }] })
  const gw = await startGatewayProcess({ GATEWAY_WORKERS: '2', GATEWAY_CONFIG: file, REDIS_URL: TEST_REDIS_URL })
  t.teardown(() => {
    gw.kill()
    for (const pid of workerPids(gw).values()) if (alive(pid)) process.kill(pid, 'SIGKILL')
  })
  const statuses: number[] = []
  for (let i = 0; i < 30; i++) statuses.push((await get(gw.base, `/${name}/${i}`)).status)
  t.equal(statuses.filter((s) => s === 200).length, 10, `exactly the limit let through (10 of 30): ${statuses.join(' ')}`)
  t.equal(statuses.filter((s) => s === 429).length, 20, 'the rest refused with 429')
  t.equal(workersSeen(up).size, 2, 'the 10 allowed requests were served by both workers')
  gw.child.kill('SIGTERM')
  t.equal(await gw.exited, 0)
})
