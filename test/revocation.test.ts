import { spawnSync } from 'node:child_process'
import { join } from 'node:path'
import Fastify, { type FastifyInstance } from 'fastify'
import t from 'tap'
import jwksAuth, { type JwksAuthPluginOptions } from '@portcullis/jwks-auth'
import { promClient } from '@portcullis/metrics'
import type { AuthService } from '../auth/server.js'
import { openRevocationStore, revocationDigest, revocationUntil } from '../store/revocations.js'
import { RevocationSet } from '../plugins/jwks-auth/src/revocations.js'
import { authFixture, type AuthFixture } from './helpers/auth-fixture.js'
import { testBackends, type TestBackend } from './helpers/backends.js'
import { freePorts } from './helpers/ports.js'
import { REPO_ROOT } from './helpers/stack.js'
import { redisSkip, TEST_REDIS_URL } from './helpers/redis.js'
import { haveRedisServer, startPrivateRedis } from '../drills/lib/private-redis.js'
import { Redis } from 'ioredis'
import { parseGatewayConfig } from '../gateway/config.js'
import { buildGateway } from '../gateway/server.js'
import { revocationRedisNames } from '@portcullis/core'

// Revocation pushed to every verifier: the auth service records it and serves it on its feed
// (GET /auth/revocations, Server-Sent Events); jwks-auth follows the feed and refuses the tokens it
// names, cached ones included, within about a second, with no call per request.

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

/** Removes what an issuer's relay left in the shared Redis. */
async function dropRedisKeys (issuer: string): Promise<void> {
  const redis = new Redis(TEST_REDIS_URL, { lazyConnect: true, maxRetriesPerRequest: 0 })
  try {
    await redis.connect()
    await redis.del(revocationRedisNames(issuer).inForce)
  } finally {
    redis.disconnect()
  }
}
const BIN = join(REPO_ROOT, 'bin', 'portcullis.js')

interface Verifier { app: FastifyInstance, url: string, registry: promClient.Registry }

async function verifier (issuer: string, audience: string, extra: Partial<JwksAuthPluginOptions> = {}, revocations = `${issuer}/auth/revocations`): Promise<Verifier> {
  const registry = new promClient.Registry()
  const app = Fastify({ logger: false })
  await app.register(jwksAuth, {
    issuers: [{ issuer, audience, revocations }],
    registry,
    ...extra
  })
  app.get('/me', async (req) => ({ sub: req.user!.sub }))
  await app.listen({ port: 0, host: '127.0.0.1' })
  return { app, url: `http://127.0.0.1:${(app.server.address() as { port: number }).port}`, registry }
}

async function waitReady (v: Verifier, ms = 5000): Promise<void> {
  const end = Date.now() + ms
  while (!v.app.jwksAuth.isReady()) {
    if (Date.now() > end) throw new Error('verifier not ready')
    await sleep(10)
  }
}

async function status (v: Verifier, token: string): Promise<number> {
  const res = await fetch(`${v.url}/me`, { headers: { authorization: `Bearer ${token}` } })
  await res.arrayBuffer()
  return res.status
}

/** Ms until every verifier answers 401 for the token (polling every 10 ms), or Infinity after `ms`. */
async function refusedWithin (vs: Verifier[], token: string, ms = 3000): Promise<number> {
  const start = Date.now()
  const pending = new Set(vs)
  while (pending.size > 0) {
    for (const v of [...pending]) if (await status(v, token) === 401) pending.delete(v)
    if (pending.size === 0) break
    if (Date.now() - start > ms) return Number.POSITIVE_INFINITY
    await sleep(10)
  }
  return Date.now() - start
}

interface Session { access: string, refresh: string }

async function login (base: string, username: string, password: string): Promise<Session> {
  const res = await fetch(`${base}/auth/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ username, password }) })
  if (res.status !== 200) throw new Error(`login ${username}: ${res.status}`)
  const b = await res.json() as { access_token: string, refresh_token: string }
  return { access: b.access_token, refresh: b.refresh_token }
}

const claims = (jwt: string): Record<string, unknown> => JSON.parse(Buffer.from(jwt.split('.')[1]!, 'base64url').toString('utf8')) as Record<string, unknown>

async function listeningAuth (backend: TestBackend, port: number, secrets?: string[], env: Record<string, string> = {}): Promise<AuthFixture> {
  const f = await authFixture(backend, { env: { AUTH_ISSUER: `http://127.0.0.1:${port}`, ...env }, ...(secrets !== undefined ? { secrets, activeKey: false } : {}) })
  await f.service.app.listen({ port, host: '127.0.0.1' })
  return f
}

/** This test stops a Redis on purpose: its own redis-server, never the shared one. */
function redisServerSkip (): string | false {
  if (haveRedisServer()) return false
  if (process.env.CI === 'true') throw new Error('redis-server is required when CI=true')
  return 'redis-server binary not installed (required only when CI=true)'
}

/** With REDIS_URL the login counters live in the shared Redis, across runs: budgets no run reaches. */
const SHARED_LOGIN_COUNTS = { AUTH_LOGIN_USER_MAX: '100000', AUTH_LOGIN_IP_MAX: '100000' }

// Each store with the auth service's feed, and with Redis pub/sub (the auth service with REDIS_URL
// publishes; the verifiers subscribe with a redis:// source).
const redisSkipReason = await redisSkip()
const transports = (await testBackends()).flatMap((backend) => [
  { backend, transport: 'feed' as const, skip: backend.skip },
  { backend, transport: 'redis' as const, skip: backend.skip !== false ? backend.skip : redisSkipReason }
])
for (const { backend, transport, skip } of transports) {
  t.test(`${backend.name}, ${transport}: logout, RFC 7009, user, session, reuse and key revocations reach two verifiers within 1 s; others keep 200`, { skip }, async (t) => {
    const b = await backend.open()
    const [port] = await freePorts(1) as [number]
    const f = await listeningAuth(b, port, undefined, transport === 'redis' ? { REDIS_URL: TEST_REDIS_URL, ...SHARED_LOGIN_COUNTS } : {})
    t.teardown(async () => { await f.service.close(); await b.cleanup() })
    const issuer = f.config.issuer
    const base = issuer
    const source = transport === 'redis' ? TEST_REDIS_URL : `${issuer}/auth/revocations`
    if (transport === 'redis') t.teardown(() => dropRedisKeys(issuer))
    for (const name of ['alice', 'bob', 'carol']) await f.users.add({ username: name, password: `${name}-password-1` })
    const vs = await Promise.all([verifier(issuer, f.config.audience, {}, source), verifier(issuer, f.config.audience, {}, source)])
    t.teardown(async () => { for (const v of vs) await v.app.close() })
    for (const v of vs) await waitReady(v)
    t.pass('both verifiers ready: keys fetched and the revocation feed caught up')
    t.equal(f.service.revocations.listening, b.name === 'postgres', b.name === 'postgres'
      ? 'PostgreSQL: commits announced by NOTIFY (the 5 s look is a safety net)'
      : 'SQLite: the store looked at every 250 ms')

    const a1 = await login(base, 'alice', 'alice-password-1')
    const a2 = await login(base, 'alice', 'alice-password-1')
    const bob = await login(base, 'bob', 'bob-password-1')
    const carol = await login(base, 'carol', 'carol-password-1')
    t.match(claims(a1.access).sid, /^[0-9a-f-]{36}$/, 'access tokens carry the session id (sid)')
    t.not(claims(a1.access).sid, claims(a2.access).sid, 'one session per login')
    for (const v of vs) for (const s of [a1, a2, bob, carol]) t.equal(await status(v, s.access), 200)

    const took: Record<string, number> = {}
    // logout: the session's access token too
    await fetch(`${base}/auth/logout`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ refresh_token: a1.refresh }) })
    took.logout = await refusedWithin(vs, a1.access)
    t.ok(took.logout <= 1000, `logout: a1 refused by both verifiers in ${took.logout} ms`)
    for (const v of vs) {
      t.equal(await status(v, a2.access), 200, 'alice\'s other session is untouched')
      t.equal(await status(v, bob.access), 200, 'bob is untouched')
    }

    // RFC 7009 with the access token itself (form-encoded, as the RFC writes it)
    const r = await fetch(`${base}/oauth/revoke`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: `token=${a2.access}&token_type_hint=access_token` })
    t.equal(r.status, 200)
    took.jti = await refusedWithin(vs, a2.access)
    t.ok(took.jti <= 1000, `/oauth/revoke of an access token: refused in ${took.jti} ms`)
    const bogus = await fetch(`${base}/oauth/revoke`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token: 'not.a.token' }) })
    t.equal(bogus.status, 200, 'an unknown token: 200 all the same (RFC 7009 2.2)')
    t.equal((await openRevocationStore(b.db).then((s) => s.since(0))).length, 2, 'and nothing recorded for it')

    // a user, through the CLI as an operator runs it
    const cli = spawnSync(process.execPath, [BIN, 'users', 'revoke', 'bob'], { env: { ...process.env, ...b.env }, encoding: 'utf8' })
    t.equal(cli.status, 0, cli.stderr)
    t.match(cli.stdout, /revoked every token of bob/)
    took.user = await refusedWithin(vs, bob.access)
    t.ok(took.user <= 1000, `users revoke (CLI, another process): bob refused in ${took.user} ms`)
    const refreshed = await fetch(`${base}/auth/refresh`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ refresh_token: bob.refresh }) })
    t.equal(refreshed.status, 401, 'bob\'s refresh token ended too')
    await sleep(1100) // iat has a one-second resolution: a login in the second of the revocation is refused too
    f.clock.now = Date.now() // the fixture's clock stands still: tokens issued now carry the real time
    const bobAgain = await login(base, 'bob', 'bob-password-1')
    for (const v of vs) t.equal(await status(v, bobAgain.access), 200, 'bob logs in again afterwards: 200')

    // refresh-token reuse revokes the session's access tokens
    const first = await fetch(`${base}/auth/refresh`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ refresh_token: carol.refresh }) })
    const next = await first.json() as { access_token: string }
    const reuse = await fetch(`${base}/auth/refresh`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ refresh_token: carol.refresh }) })
    t.equal(reuse.status, 401, 'the rotated refresh token presented again')
    took.reuse = await refusedWithin(vs, next.access_token)
    t.ok(took.reuse <= 1000, `reuse detection: the session's newest access token refused in ${took.reuse} ms`)

    // a verifier started after all this refuses the revoked tokens from its first request
    const late = await verifier(issuer, f.config.audience, {}, source)
    t.teardown(() => late.app.close())
    t.notOk(late.app.jwksAuth.isReady(), 'not ready before the feed is caught up')
    await waitReady(late)
    for (const s of [a1.access, a2.access, bob.access, next.access_token]) t.equal(await status(late, s), 401, 'a revoked token: 401 at its first request')
    t.equal(await status(late, bobAgain.access), 200)

    // a key: every token it signed
    const active = (await f.keys.list()).find((k) => k.state === 'active')!
    const dave = await login(base, 'alice', 'alice-password-1')
    await f.keys.rotateNow({ activateNow: true }) // a new active key first: the old one is then retired and revocable
    await f.keys.revoke(active.kid)
    await openRevocationStore(b.db).then((s) => s.add([{ kind: 'kid', value: active.kid, reason: 'test', expiresAt: revocationUntil(Date.now(), f.config.accessTokenTtl, 60) }]))
    took.key = await refusedWithin(vs, dave.access)
    t.ok(took.key <= 1000, `a revoked key: its tokens refused in ${took.key} ms (before the JWKS refresh)`)

    const text = await vs[0]!.registry.metrics()
    t.match(text, /portcullis_revocations_received_total\{issuer="[^"]+",kind="sid"\} [2-9]/, 'sid revocations counted')
    t.match(text, /portcullis_revocations_received_total\{issuer="[^"]+",kind="sub"\} 1/)
    t.match(text, /portcullis_revocations_received_total\{issuer="[^"]+",kind="jti"\} 1/)
    t.match(text, /portcullis_revocations_received_total\{issuer="[^"]+",kind="kid"\} 1/)
    t.match(text, /portcullis_revocation_feed_up\{issuer="[^"]+"\} 1/)
    t.match(text, /portcullis_revocation_set_size\{issuer="[^"]+"\} 5/)
    t.match(text, /portcullis_auth_requests_total\{result="failure",reason="revoked"\} [1-9]/)
    t.comment(`refused after: ${JSON.stringify(took)} ms`)
  })
}

t.test('feed outage: refuse policy answers 401 past the allowed time; on reconnect the verifier catches up on what it missed', async (t) => {
  const [backend] = await testBackends()
  const b = await backend!.open()
  const [port] = await freePorts(1) as [number]
  let f = await listeningAuth(b, port)
  let service: AuthService = f.service
  t.teardown(async () => { await service.close(); await b.cleanup() })
  const issuer = f.config.issuer
  await f.users.add({ username: 'erin', password: 'erin-password-1' })
  await f.users.add({ username: 'fay', password: 'fay-password-1' })
  const erin = await login(issuer, 'erin', 'erin-password-1')
  const fay = await login(issuer, 'fay', 'fay-password-1')
  const refuse = await verifier(issuer, f.config.audience, { revocationPolicy: 'refuse', revocationStaleAfter: 0.5, keyCacheTtl: 3600 })
  const serve = await verifier(issuer, f.config.audience, { revocationStaleAfter: 0.5, keyCacheTtl: 3600 })
  t.teardown(async () => { await refuse.app.close(); await serve.app.close() })
  await waitReady(refuse)
  await waitReady(serve)
  t.equal(await status(refuse, erin.access), 200)

  await service.close() // the auth service goes away: the feed is lost
  await sleep(800)
  t.equal(await status(refuse, erin.access), 401, 'refuse: 401 once the feed has been lost for longer than revocationStaleAfter')
  t.equal(await status(serve, erin.access), 200, 'serve: still 200 (keys still held)')
  t.match(await serve.registry.metrics(), /portcullis_revocation_feed_up\{issuer="[^"]+"\} 0/, 'and the feed counted as down')
  t.match(await refuse.registry.metrics(), /reason="revocations_unavailable"\} [1-9]/, 'the refusals counted by reason')

  // revoked while no auth service runs (the CLI writes to the store): caught up on reconnect
  const revs = await openRevocationStore(b.db)
  await revs.add([{ kind: 'sid', value: String(claims(erin.access).sid), reason: 'test', expiresAt: Date.now() + 60_000 }])
  f = await listeningAuth(b, port, f.secrets)
  service = f.service
  const took = await refusedWithin([refuse, serve], erin.access, 10_000)
  t.ok(took < 10_000, `after the feed is back, the session revoked meanwhile is refused by both (${took} ms)`)
  t.equal(await status(refuse, fay.access), 200, 'refuse: other tokens are accepted again')
  t.equal(await status(serve, fay.access), 200)
  t.match(await serve.registry.metrics(), /portcullis_revocation_feed_reconnects_total\{issuer="[^"]+"\} [1-9]/, 'reconnects counted')
})

t.test('Redis outage: refuse policy answers 401 past the allowed time; once Redis is back (empty) the verifiers catch up on what was revoked meanwhile', { skip: redisServerSkip() }, async (t) => {
  const redis = await startPrivateRedis()
  t.teardown(redis.close)
  const [backend] = await testBackends()
  const b = await backend!.open()
  const [port] = await freePorts(1) as [number]
  const f = await listeningAuth(b, port, undefined, { REDIS_URL: redis.url })
  t.teardown(async () => { await f.service.close(); await b.cleanup() })
  const issuer = f.config.issuer
  await f.users.add({ username: 'gus', password: 'gus-password-1' })
  await f.users.add({ username: 'hal', password: 'hal-password-1' })
  const gus = await login(issuer, 'gus', 'gus-password-1')
  const hal = await login(issuer, 'hal', 'hal-password-1')
  await f.users.add({ username: 'ivy', password: 'ivy-password-1' })
  const ivy = await login(issuer, 'ivy', 'ivy-password-1')
  const opts = { revocationStaleAfter: 0.5, keyCacheTtl: 3600 }
  const refuse = await verifier(issuer, f.config.audience, { ...opts, revocationPolicy: 'refuse' }, redis.url)
  const serve = await verifier(issuer, f.config.audience, opts, redis.url)
  t.teardown(async () => { await refuse.app.close(); await serve.app.close() })
  await waitReady(refuse)
  await waitReady(serve)
  t.equal(await status(refuse, gus.access), 200)
  await fetch(`${issuer}/auth/logout`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ refresh_token: ivy.refresh }) })
  t.ok(await refusedWithin([refuse, serve], ivy.access) <= 1000, 'a logout before the outage: refused by both')

  await redis.kill() // every connection drops, and everything Redis held is gone
  await sleep(800)
  t.equal(await status(refuse, gus.access), 401, 'refuse: 401 once Redis has been lost for longer than revocationStaleAfter')
  t.equal(await status(serve, gus.access), 200, 'serve: still 200')
  t.match(await serve.registry.metrics(), /portcullis_revocation_feed_up\{issuer="[^"]+"\} 0/, 'the source counted as down')

  // logged out while Redis is down: recorded in the store, published once Redis is back
  const out = await fetch(`${issuer}/auth/logout`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ refresh_token: gus.refresh }) })
  t.equal(out.status, 204, 'logout answers while Redis is down')
  await redis.start() // empty: no persistence
  const took = await refusedWithin([refuse, serve], gus.access, 10_000)
  t.ok(took < 10_000, `after Redis is back, the session logged out meanwhile is refused by both (${took} ms)`)
  t.equal(await status(refuse, hal.access), 200, 'refuse: other tokens are accepted again')
  t.match(await serve.registry.metrics(), /portcullis_revocation_feed_reconnects_total\{issuer="[^"]+"\} [1-9]/, 'reconnects counted')
  const late = await verifier(issuer, f.config.audience, {}, redis.url)
  t.teardown(() => late.app.close())
  await waitReady(late)
  t.equal(await status(late, gus.access), 401, 'a verifier started afterwards has it from the restarted Redis at its first request')
  t.equal(await status(late, ivy.access), 401, 'and what was revoked before the outage (the restarted Redis was filled again from the store)')
  t.equal(await status(late, hal.access), 200)
})

t.test('the revocation set: O(1) checks, 100,000 revoked sessions held and forgotten once expired', async (t) => {
  const set = new RevocationSet()
  const now = Date.now()
  for (let i = 0; i < 100_000; i++) set.add({ kind: 'sid', digest: revocationDigest('sid', `s-${i}`), revokedAt: now, expiresAt: now + 1000 + (i % 2) * 1000 })
  t.equal(set.size, 100_000, '100,000 entries held')
  const keys = (sid: string): Parameters<RevocationSet['revoked']>[0] => ({ sid: revocationDigest('sid', sid), jti: undefined, sub: revocationDigest('sub', 'u'), issuedAt: now, kid: 'k' })
  t.ok(set.revoked(keys('s-99999')))
  t.notOk(set.revoked(keys('s-100000')))
  t.equal(set.prune(now + 1500), 50_000, 'half expired: forgotten')
  t.equal(set.size, 50_000)
  t.equal(set.prune(now + 2500), 50_000)
  t.equal(set.size, 0, 'all forgotten')
  // a user revocation refuses tokens issued at or before it, not after
  set.add({ kind: 'sub', digest: revocationDigest('sub', 'u'), revokedAt: now, expiresAt: now + 60_000 })
  t.ok(set.revoked({ ...keys('x'), issuedAt: now - 1000 }))
  t.notOk(set.revoked({ ...keys('x'), issuedAt: now + 1000 }))
})

t.test('the feed refuses a malformed resume position and ends open streams when the service closes', async (t) => {
  const [backend] = await testBackends()
  const b = await backend!.open()
  const [port] = await freePorts(1) as [number]
  const f = await listeningAuth(b, port)
  t.teardown(async () => { await b.cleanup() })
  const bad = await fetch(`${f.config.issuer}/auth/revocations`, { headers: { 'last-event-id': 'x' } })
  t.equal(bad.status, 400)
  const res = await fetch(`${f.config.issuer}/auth/revocations?since=0`)
  t.equal(res.headers.get('content-type'), 'text/event-stream; charset=utf-8')
  const reader = res.body!.getReader()
  const first = new TextDecoder().decode((await reader.read()).value)
  t.match(first, /event: ready/, 'caught up at once on an empty store')
  const closed = f.service.close()
  let ended = false
  for (;;) {
    const r = await reader.read().catch(() => ({ done: true }))
    if (r.done === true) { ended = true; break }
  }
  await closed
  t.ok(ended, 'the stream ends when the service closes (the close does not wait for it)')
})

t.test('the gateway: `revocations: redis` takes them from its REDIS_URL, and without REDIS_URL stops the boot naming it', async (t) => {
  const config = parseGatewayConfig({
    issuers: [{ issuer: 'http://127.0.0.1:9', audience: 'portcullis', revocations: 'redis' }],
    rateLimit: false,
    routes: [{ prefix: '/api', upstream: 'http://127.0.0.1:9' }]
  }, 'routes.yaml')
  await t.rejects(buildGateway({ config, logger: false }), /REDIS_URL.*revocations: redis|revocations: redis.*REDIS_URL/, 'no REDIS_URL: the boot stops with the setting named')
  t.throws(() => parseGatewayConfig({ issuers: [{ issuer: 'http://127.0.0.1:9', audience: 'a', revocations: 'redis://secret@127.0.0.1' }], routes: [] }, 'routes.yaml'),
    /revocations/, 'a Redis URL (and its password) has no place in the route file: `redis` names the gateway\'s REDIS_URL')
})
