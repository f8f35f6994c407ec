import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { setTimeout as delay } from 'node:timers/promises'
import t from 'tap'
import { Redis } from 'ioredis'
import { authFixture, type AuthFixture } from './helpers/auth-fixture.js'
import { testBackends } from './helpers/backends.js'
import { freePort } from './helpers/ports.js'
import { redisReachable } from './helpers/redis.js'

// This test stops its Redis on purpose, so it runs its own redis-server (never the shared one).
const haveRedisServer = spawnSync('redis-server', ['--version']).status === 0
if (!haveRedisServer && process.env.CI === 'true') throw new Error('redis-server is required when CI=true')
const skip = haveRedisServer ? false : 'redis-server binary not installed (required only when CI=true)'

async function startRedis (): Promise<{ url: string, stop: () => Promise<void> }> {
  const port = await freePort()
  const child: ChildProcess = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' })
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()))
  const url = `redis://127.0.0.1:${port}`
  for (let i = 0; i < 100 && !(await redisReachable(url)); i++) await delay(50)
  return {
    url,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM')
      await exited
    }
  }
}

t.test('REDIS_URL: two auth replicas share the login counters; Redis down -> 503, never uncounted guesses', { skip }, async (t) => {
  const redis = await startRedis()
  t.teardown(redis.stop)
  const sqlite = (await testBackends())[0]!
  const b = await sqlite.open()
  const env = { REDIS_URL: redis.url, AUTH_LOGIN_USER_MAX: '4', AUTH_LOGIN_IP_MAX: '100' }
  const replicas: AuthFixture[] = []
  t.teardown(async () => {
    for (const r of replicas.reverse()) await r.service.close()
    await b.cleanup()
  })
  const one = await authFixture(b, { env })
  replicas.push(one)
  const two = await authFixture(b, { env, activeKey: false, secrets: one.secrets })
  replicas.push(two)
  await one.users.add({ username: 'quinn', password: 'quinn password' })

  const statuses: number[] = []
  for (let i = 0; i < 6; i++) {
    const app = (i % 2 === 0 ? one : two).service.app
    statuses.push((await app.inject({ method: 'POST', url: '/auth/login', payload: { username: 'quinn', password: `guess ${i}` } })).statusCode)
  }
  t.same(statuses, [401, 401, 401, 401, 429, 429], 'four attempts across both replicas, then 429 on either')

  // The keys read `portcullis-auth-login:undefinedundefined-user:quinn` before (a route-less
  // @fastify/rate-limit child store); each counter now has the key its name says.
  const client = new Redis(redis.url, { lazyConnect: true })
  await client.connect()
  const keys = (await client.keys('*')).sort()
  await client.quit()
  t.same(keys, ['portcullis-auth-login:ip:127.0.0.1', 'portcullis-auth-login:user:quinn'])

  await redis.stop()
  const down = await one.service.app.inject({ method: 'POST', url: '/auth/login', payload: { username: 'rita', password: 'whatever' } })
  t.equal(down.statusCode, 503)
  t.same(down.json(), { error: 'temporarily_unavailable', error_description: 'login is unavailable, retry later' })
})

t.test('REDIS_URL unreachable at boot: the boot fails naming REDIS_URL', { skip }, async (t) => {
  const sqlite = (await testBackends())[0]!
  const b = await sqlite.open()
  t.teardown(() => b.cleanup())
  const port = await freePort()
  await t.rejects(authFixture(b, { env: { REDIS_URL: `redis://127.0.0.1:${port}` } }), { code: 'PORTCULLIS_CONFIG', message: /REDIS_URL: Redis not reachable/ })
})
