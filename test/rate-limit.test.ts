import t, { type Test } from 'tap'
import Fastify from 'fastify'
import rateLimitPlugin from '@portcullis/rate-limit'
import { clientKey } from '../plugins/rate-limit/src/ip.js'
import { buildGateway, type Gateway } from '../gateway/server.js'
import { parseGatewayConfig } from '../gateway/config.js'
import { echoUpstream, rawRequest } from './helpers/upstream.js'
import { rsaKey, startTestIssuer, type TestIssuer } from './helpers/issuer.js'

async function start (t: Test, rateLimit: unknown, routes: Array<Record<string, unknown>>): Promise<{ gw: Gateway, base: string, issuer: TestIssuer }> {
  const issuer = await startTestIssuer()
  const up = await echoUpstream()
  const gw = await buildGateway({
    config: parseGatewayConfig({
      issuers: [{ issuer: issuer.url, audience: 'portcullis' }],
      rateLimit,
      routes: routes.map((r) => ({ upstream: up.url, ...r }))
    }, 'test'),
    logger: false
  })
  await gw.app.listen({ port: 0, host: '127.0.0.1' })
  await gw.app.jwksAuth.refresh()
  t.teardown(async () => { await gw.close(); await issuer.close(); await up.close() })
  const addr = gw.app.server.address()
  return { gw, base: `http://127.0.0.1:${typeof addr === 'object' && addr !== null ? addr.port : 0}`, issuer }
}

const bearer = (token: string): Record<string, string> => ({ authorization: `Bearer ${token}` })

t.test('authenticated callers are limited by sub, each with its own budget; RateLimit-* and Retry-After', async (t) => {
  const { base, issuer, gw } = await start(t, { max: 2, timeWindow: '1m' }, [{ prefix: '/api' }])
  const alice = issuer.sign({ sub: 'alice' })
  const alice2 = issuer.sign({ sub: 'alice' }) // another token, same subject: same budget
  const bob = issuer.sign({ sub: 'bob' })
  const r1 = await rawRequest(base, '/api/x', { headers: bearer(alice) })
  t.equal(r1.status, 200)
  t.equal(r1.headers['ratelimit-limit'], '2')
  t.equal(r1.headers['ratelimit-remaining'], '1')
  t.equal(r1.headers['ratelimit-reset'], '60')
  t.equal((await rawRequest(base, '/api/x', { headers: bearer(alice2) })).status, 200)
  const over = await rawRequest(base, '/api/x', { headers: bearer(alice) })
  t.equal(over.status, 429)
  // the window started at the first request: 60 s, or 59 if a second has passed since (slow machine)
  t.ok(['59', '60'].includes(over.headers['retry-after'] as string), `Retry-After ${over.headers['retry-after']}`)
  t.equal(over.headers['ratelimit-remaining'], '0')
  t.equal(over.json().code, 'PORTCULLIS_RATE_LIMITED')
  t.equal((await rawRequest(base, '/api/x', { headers: bearer(bob) })).status, 200, 'bob is not limited by alice')
  const m = (await gw.admin.inject({ url: '/metrics' })).body
  t.match(m, /portcullis_rate_limit_rejections_total\{route="\*"\} 1/)
})

t.test('anonymous callers are limited by IP; per-route limits and opt-outs', async (t) => {
  const { base, issuer } = await start(t, { max: 100 }, [
    { prefix: '/pub', auth: false, rateLimit: { max: 2, timeWindow: '30s' } },
    { prefix: '/free', auth: false, rateLimit: false },
    { prefix: '/api' }
  ])
  t.equal((await rawRequest(base, '/pub/a')).status, 200)
  t.equal((await rawRequest(base, '/pub')).status, 200, '/pub and /pub/* share the route budget')
  const over = await rawRequest(base, '/pub/b')
  t.equal(over.status, 429)
  t.ok(['29', '30'].includes(over.headers['retry-after'] as string), `Retry-After ${over.headers['retry-after']}`)
  for (let i = 0; i < 5; i++) t.equal((await rawRequest(base, '/free/x')).status, 200)
  t.equal((await rawRequest(base, '/free/x')).headers['ratelimit-limit'], undefined, 'no rate-limit headers on an unlimited route')
  const api = await rawRequest(base, '/api/x', { headers: bearer(issuer.sign()) })
  t.equal(api.headers['ratelimit-limit'], '100', 'the global default applies elsewhere')
})

t.test('failure budget: a guesser\'s IP gets 429 on its failed tokens, while valid users behind the same IP keep getting 200', async (t) => {
  const { base, issuer, gw } = await start(t, { max: 3, timeWindow: '1m' }, [{ prefix: '/api' }, { prefix: '/pub', auth: false, rateLimit: false }])
  // a forged signature: the issuer's kid, another key
  const forged = (i: number): string => issuer.sign({ sub: `guess${i}` }, { key: rsaKey(), kid: issuer.published[0]!.kid })
  for (let i = 0; i < 3; i++) {
    t.equal((await rawRequest(base, '/api/x', { headers: bearer(`guess.${i}.x`) })).status, 401, `malformed guess ${i} is a 401`)
  }
  // the 4th failure is past the budget of 3 (the response is already on its way: still a 401)
  t.equal((await rawRequest(base, '/api/x', { headers: bearer(forged(3)) })).status, 401, 'forged guess: 401')
  const refused = await rawRequest(base, '/api/x', { headers: bearer(forged(4)) })
  t.equal(refused.status, 429, 'over the failure budget: a failed token gets 429')
  t.equal(refused.json().code, 'PORTCULLIS_RATE_LIMITED')
  t.ok(Number(refused.headers['retry-after']) > 0, 'with Retry-After')
  t.equal((await rawRequest(base, '/api/x', { headers: bearer('guess.9.x') })).status, 429, 'a malformed one too')

  // the other side: a valid user behind the same IP is verified first and goes on, on its own budget
  const alice = issuer.sign({ sub: 'alice' })
  for (let i = 0; i < 3; i++) {
    const ok = await rawRequest(base, '/api/x', { headers: bearer(alice) })
    t.equal(ok.status, 200, `valid token from the guesser's IP: 200 (${i})`)
    t.equal(ok.headers['ratelimit-remaining'], String(2 - i), 'spending alice\'s budget, not the IP\'s')
  }
  t.equal((await rawRequest(base, '/api/x', { headers: bearer(issuer.sign({ sub: 'bob' })) })).status, 200, 'a fresh token of another user: 200')
  // a real holder's failure keeps its 401, so the client refreshes instead of backing off
  const expired = await rawRequest(base, '/api/x', { headers: bearer(issuer.sign({ sub: 'carol' }, { now: Math.floor(Date.now() / 1000) - 3600 })) })
  t.equal(expired.status, 401, 'an expired token: 401, not 429')
  t.equal((await rawRequest(base, '/api/x')).status, 401, 'no token: 401 with the challenge')
  t.equal((await rawRequest(base, '/pub/x')).status, 200, 'a route that needs no token: 200')

  const m = (await gw.admin.inject({ url: '/metrics' })).body
  // labelled by the budget name like every other 429, not by the route pattern (/api/*)
  t.match(m, /portcullis_rate_limit_rejections_total\{route="\*"\} 2/, 'the two refused guesses, under the route\'s budget name')
  t.notMatch(m, /rejections_total\{route="\/api/)
})

t.test('failure budget: expired and missing tokens never spend it; the plugin without checkOverBudget refuses the IP outright', async (t) => {
  const { base, issuer } = await start(t, { max: 2, timeWindow: '1m' }, [{ prefix: '/api' }])
  const old = Math.floor(Date.now() / 1000) - 3600
  for (let i = 0; i < 6; i++) {
    t.equal((await rawRequest(base, '/api/x', { headers: bearer(issuer.sign({ sub: `u${i}` }, { now: old })) })).status, 401, `expired ${i}: 401`)
    t.equal((await rawRequest(base, '/api/x')).status, 401, `missing ${i}: 401`)
  }
  t.equal((await rawRequest(base, '/api/x', { headers: bearer('bad.1.x') })).status, 401, 'the first guess after them is still a 401: nothing was spent')

  // a plain Fastify app: 401s from its own hook, no checkOverBudget
  const app = Fastify({ logger: false })
  await app.register(rateLimitPlugin, { global: false, failureBudget: { max: 1, timeWindow: 60_000 } })
  app.addHook('onRequest', async (request) => {
    if (request.headers.authorization !== 'good') throw Object.assign(new Error('no'), { statusCode: 401 })
  })
  app.get('/', async () => 'ok')
  t.teardown(() => app.close())
  t.equal((await app.inject({ url: '/', headers: { authorization: 'bad' } })).statusCode, 401)
  t.equal((await app.inject({ url: '/', headers: { authorization: 'bad' } })).statusCode, 401, 'past the budget on this one')
  const r = await app.inject({ url: '/', headers: { authorization: 'good' } })
  t.equal(r.statusCode, 429, 'without checkOverBudget every request of the IP waits')
  t.ok(Number(r.headers['retry-after']) > 0)
})

t.test('memoryKeys: the in-memory store keeps that many callers, forgetting the least recently seen', async (t) => {
  const app = Fastify({ logger: false, trustProxy: true })
  await app.register(rateLimitPlugin, { max: 1, timeWindow: 60_000, memoryKeys: 2, failureBudget: false })
  app.get('/x', async () => 'ok')
  t.teardown(() => app.close())
  const hit = async (ip: string): Promise<number> => (await app.inject({ url: '/x', headers: { 'x-forwarded-for': ip } })).statusCode
  t.equal(await hit('10.0.0.1'), 200)
  t.equal(await hit('10.0.0.1'), 429, 'over its budget of 1')
  t.equal(await hit('10.0.0.2'), 200)
  t.equal(await hit('10.0.0.3'), 200, 'a third caller: the first, least recently seen, is forgotten')
  t.equal(await hit('10.0.0.1'), 200, 'so it starts a new window')
  t.equal(await hit('10.0.0.3'), 429, 'a caller still kept is still counted')
})

t.test('bad plugin options fail at registration with the option named', async (t) => {
  for (const [opts, re] of [
    [{ max: -1 }, /option "max" must be a non-negative integer/],
    [{ max: 1.5 }, /option "max"/],
    [{ timeWindow: 0 }, /option "timeWindow" must be a positive number/],
    [{ redis: 'http://x' }, /option "redis" must be a redis:\/\/ or rediss:\/\/ URL/],
    [{ failureBudget: { max: -1 } }, /option "failureBudget.max" must be a non-negative integer/],
    [{ failureBudget: { timeWindow: 0 } }, /option "failureBudget.timeWindow" must be a positive number/],
    [{ checkOverBudget: 'yes' as unknown as () => Promise<void> }, /option "checkOverBudget" must be a function/],
    [{ memoryKeys: 0 }, /option "memoryKeys" must be an integer >= 1/]
  ] as const) {
    const app = Fastify({ logger: false })
    await t.rejects(async () => { await app.register(rateLimitPlugin, opts).ready() }, re)
    await app.close()
  }
})

t.test('plugin: a groupId given two different budgets is refused at boot, naming the route', async (t) => {
  const app = Fastify()
  await app.register(rateLimitPlugin)
  app.get('/a', { config: { rateLimit: { max: 5, timeWindow: 60_000, groupId: 'g' } } }, async () => 'a')
  t.throws(() => app.get('/b', { config: { rateLimit: { max: 50, timeWindow: 60_000, groupId: 'g' } } }, async () => 'b'),
    /route \/b: config\.rateLimit\.groupId "g" is already a budget of max 5 per 60000 ms/)
  app.get('/c', { config: { rateLimit: { max: 5, timeWindow: 60_000, groupId: 'g' } } }, async () => 'c')
  await app.ready()
  t.teardown(() => app.close())
  const r = await app.inject({ url: '/c' })
  t.equal(r.headers['ratelimit-limit'], '5', 'the same budget under one groupId is shared')
  await app.inject({ url: '/a' })
  t.equal((await app.inject({ url: '/c' })).headers['ratelimit-remaining'], '2', '/a and /c count against one budget')
})

t.test('client keys: IPv4 as is, IPv4-mapped IPv6 as IPv4, other IPv6 by /64 network', async (t) => {
  const cases: Array<[string, string]> = [
    ['203.0.113.7', '203.0.113.7'],
    ['::ffff:203.0.113.7', '203.0.113.7'],
    ['::FFFF:cb00:7107', '203.0.113.7'],
    ['2001:db8:1:2:3:4:5:6', '2001:db8:1:2::/64'],
    ['2001:db8:1:2::99', '2001:db8:1:2::/64'],
    ['2001:0DB8:0001:0002:ffff:ffff:ffff:ffff', '2001:db8:1:2::/64'],
    ['fe80::1%eth0', 'fe80:0:0:0::/64'],
    ['::1', '0:0:0:0::/64'],
    ['2001:db8::', '2001:db8:0:0::/64'],
    ['64:ff9b::192.0.2.33', '64:ff9b:0:0::/64']
  ]
  for (const [ip, key] of cases) t.equal(clientKey(ip), key, ip)
  t.equal(clientKey(undefined), 'unknown', 'no address (a Unix socket): one shared key, not a throw')
  t.not(clientKey('2001:db8:1:2::1'), clientKey('2001:db8:1:3::1'), 'another /64 is another client')
})
