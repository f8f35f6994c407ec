import { randomUUID } from 'node:crypto'
import { Redis } from 'ioredis'
import t from 'tap'
import { BypassingStore, MemoryStore, RedisStore, createRedisClient, type Hit, type RateLimitStore } from '@portcullis/rate-limit'
import { TEST_REDIS_URL, redisSkip } from './helpers/redis.js'

const incr = (store: RateLimitStore, key: string, windowMs: number): Promise<Hit> => new Promise((resolve, reject) => {
  store.incr(key, windowMs, (err, hit) => { if (err !== null || hit === undefined) reject(err ?? new Error('no hit')); else resolve(hit) })
})

t.test('memory store: a full store forgets the least recently hit key, never a live key because another one\'s window restarts', async (t) => {
  let now = 1_000_000
  const store = new MemoryStore(3, () => now)
  await incr(store, 'b', 10_000)
  await incr(store, 'b', 10_000)
  await incr(store, 'a', 1000)
  await incr(store, 'c', 10_000)
  now += 1500 // a's window is over, b's and c's are not
  t.same(await incr(store, 'a', 1000), { current: 1, ttl: 1000 }, "a's window restarts")
  t.equal((await incr(store, 'b', 10_000)).current, 3, "b kept its count (restarting a's window evicted b, the oldest key)")
  await incr(store, 'd', 10_000) // a new key in a full store: the least recently hit one (c) goes
  t.equal((await incr(store, 'a', 1000)).current, 2, 'a was hit recently and stays')
  t.equal((await incr(store, 'c', 10_000)).current, 1, 'c was forgotten')
})

t.test('Redis store: a window that is not a whole number of ms still counts and expires (Redis refused it: ERR value is not an integer)', { skip: await redisSkip() }, async (t) => {
  const redis = await createRedisClient(TEST_REDIS_URL)
  await redis.connect()
  const raw = new Redis(TEST_REDIS_URL)
  t.teardown(async () => { redis.disconnect(); await raw.quit() })
  const prefix = `portcullis-test-${randomUUID()}:`
  const store = new RedisStore(redis, prefix)
  const window = 1.1 * 3600 * 1000 // 3960000.0000000005, what 1.1h * 1000 gives
  t.not(window, Math.round(window))
  const first = await incr(store, 'k', window)
  t.equal(first.current, 1)
  t.equal(first.ttl, 3960000)
  t.equal((await incr(store, 'k', window)).current, 2)
  const pttl = await raw.pttl(`${prefix}k`)
  t.ok(pttl > 3_900_000 && pttl <= 3_960_000, `the key expires (PTTL ${pttl})`)
  await raw.del(`${prefix}k`)
})

t.test('bypassing store: after N failures in a row the store is not called until retryAfter; one probe; success ends the bypass', async (t) => {
  let now = 0
  let calls = 0
  let failing = true
  const inner: RateLimitStore = {
    incr: (_key, _w, cb) => { calls++; if (failing) cb(new Error('down')); else cb(null, { current: 1, ttl: 10 }) }
  }
  const store = new BypassingStore(inner, 3, 1000, () => now)
  for (let i = 0; i < 3; i++) await t.rejects(incr(store, 'k', 10), /down/)
  t.equal(calls, 3)
  t.ok(store.bypassed)
  for (let i = 0; i < 10; i++) await t.rejects(incr(store, 'k', 10), /bypassed/)
  t.equal(calls, 3, 'bypassed: the store is not called')
  now = 1000
  await t.rejects(incr(store, 'k', 10), /down/, 'one probe after retryAfter')
  t.equal(calls, 4)
  await t.rejects(incr(store, 'k', 10), /bypassed/, 'a failed probe bypasses again')
  now = 2000
  failing = false
  t.same(await incr(store, 'k', 10), { current: 1, ttl: 10 }, 'a successful probe')
  t.notOk(store.bypassed)
  t.same(await incr(store, 'k', 10), { current: 1, ttl: 10 })
  t.equal(calls, 6)
})

t.test('Redis store: an event-loop stall longer than the command timeout fails no command whose answer arrived meanwhile, and a healthy Redis is not bypassed', { skip: await redisSkip() }, async (t) => {
  // the plugin's own client, as the plugin builds it
  const redis = await createRedisClient(TEST_REDIS_URL)
  await redis.connect()
  const raw = new Redis(TEST_REDIS_URL)
  const prefix = `portcullis-test-${randomUUID()}:`
  t.teardown(async () => { await raw.del(`${prefix}k`); redis.disconnect(); await raw.quit() })
  const store = new BypassingStore(new RedisStore(redis, prefix, { commandTimeout: 50 }), 5, 5000)
  await incr(store, 'k', 60_000) // the script is loaded
  const errors: Array<Error | null> = []
  for (let i = 0; i < 64; i++) store.incr('k', 60_000, (err) => { errors.push(err) })
  // a 250 ms stall of this process (a GC pause, a slow request) while Redis answers all 64
  const until = Date.now() + 250
  while (Date.now() < until) { /* busy */ }
  while (errors.length < 64) await new Promise((resolve) => setTimeout(resolve, 5))
  t.equal(errors.filter((e) => e !== null).length, 0, 'no command failed: the answers were read before the timers decided')
  t.equal((await incr(store, 'k', 60_000)).current, 66, 'every hit counted, and the store is not bypassed')
})

t.test('Redis store: a Redis that does not answer fails a hit after the command timeout', async (t) => {
  const hung = { defineCommand: () => {}, connect: async () => {}, disconnect: () => {}, on: () => hung, portcullisRateLimit: () => new Promise(() => {}) }
  const store = new RedisStore(hung, 'x:', { commandTimeout: 30 })
  const start = Date.now()
  const err = await new Promise<Error | null>((resolve) => { store.incr('k', 1000, (e) => { resolve(e) }) })
  t.match(err, { name: 'RedisCommandTimeoutError', message: /did not answer within 30 ms/ })
  t.ok(Date.now() - start >= 30, 'not before the timeout')
})
