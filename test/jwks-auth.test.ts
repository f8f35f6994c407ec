import Fastify, { type FastifyInstance } from 'fastify'
import t, { type Test } from 'tap'
import { request as httpRequest } from 'node:http'
import jwksAuth, { type JwksAuthOptions } from '@portcullis/jwks-auth'
import metrics from '@portcullis/metrics'
import { resolveOptions } from '../plugins/jwks-auth/src/options.js'
import { b64url, rsaKey, signJwt, startTestIssuer, type TestIssuer } from './helpers/issuer.js'

async function buildApp (issuer: TestIssuer, opts: Partial<JwksAuthOptions> = {}): Promise<FastifyInstance> {
  const app = Fastify()
  await app.register(metrics, { defaultMetrics: false })
  await app.register(jwksAuth, { issuers: [{ issuer: issuer.url, audience: issuer.audience }], ...opts })
  app.get('/me', async (req) => req.user)
  app.get('/public', { config: { auth: false } }, async (req) => ({ user: req.user }))
  await app.ready()
  await app.jwksAuth.refresh()
  return app
}

t.test('a valid token passes and request.user has the contract shape', async (t) => {
  const issuer = await startTestIssuer()
  t.teardown(() => issuer.close())
  const app = await buildApp(issuer)
  t.teardown(() => app.close())
  t.ok(app.jwksAuth.isReady(), 'ready after the first JWKS fetch')

  const token = issuer.sign({ sub: 'alice', role: 'admin', permissions: ['orders:read'], scope: 'a b' })
  const res = await app.inject({ url: '/me', headers: { authorization: `Bearer ${token}` } })
  t.equal(res.statusCode, 200)
  const user = res.json()
  t.equal(user.sub, 'alice')
  t.equal(user.iss, issuer.url)
  t.equal(user.aud, 'portcullis')
  t.equal(user.role, 'admin')
  t.same(user.permissions, ['orders:read'])
  t.same(user.scope, ['a', 'b'])
  t.type(user.exp, 'number')
  t.equal(user.claims.sub, 'alice')

  const lower = await app.inject({ url: '/me', headers: { authorization: `bearer   ${token}` } })
  t.equal(lower.statusCode, 200, 'scheme is case-insensitive, spaces tolerated')

  const pub = await app.inject({ url: '/public' })
  t.equal(pub.statusCode, 200, 'auth: false routes need no token')
  t.same(pub.json(), { user: null })

  const m = await app.inject({ url: '/me' })
  t.equal(m.statusCode, 401)
  t.equal(m.headers['www-authenticate'], 'Bearer', 'no token: a plain challenge without an error code (RFC 6750 3.1)')
  t.same(Object.keys(m.json()).sort(), ['code', 'error', 'message', 'statusCode'])
  t.equal(m.json().message, 'Missing or invalid bearer token')

  const exp = issuer.sign({}, { now: Math.floor(Date.now() / 1000) - 3600 })
  const expired = await app.inject({ url: '/me', headers: { authorization: `Bearer ${exp}` } })
  t.equal(expired.statusCode, 401)
  t.equal(expired.headers['www-authenticate'], 'Bearer error="invalid_token"', 'a bad token: invalid_token')

  const text = await app.metricsRegistry.metrics()
  t.match(text, /portcullis_auth_requests_total\{result="success",reason="ok"\} 2/)
  t.match(text, /portcullis_auth_requests_total\{result="failure",reason="missing"\} 1/)
  t.match(text, /portcullis_auth_requests_total\{result="failure",reason="expired"\} 1/)
  t.match(text, /portcullis_auth_verify_duration_seconds_count\{cache="miss"\} 1/)
  t.match(text, /portcullis_auth_verify_duration_seconds_count\{cache="hit"\} 1/)
  t.match(text, /portcullis_jwks_refresh_total\{result="updated"\} 1/)
  t.match(text, new RegExp(`portcullis_jwks_keys\\{issuer="${issuer.url}"\\} 1`))
  t.match(text, /portcullis_jwks_stale_served_total/)
})

t.test('global: false leaves routes open unless they use app.authenticate; config rules still apply', async (t) => {
  const issuer = await startTestIssuer()
  t.teardown(() => issuer.close())
  const app = Fastify()
  await app.register(jwksAuth, { issuers: [{ issuer: issuer.url, audience: 'portcullis' }], global: false })
  app.get('/open', async () => ({ ok: true }))
  app.get('/closed', { preHandler: app.authenticate }, async (req) => ({ sub: req.user?.sub }))
  app.get('/admin', { preHandler: app.authenticate, config: { auth: { roles: ['admin'] } } }, async () => ({ ok: true }))
  app.get('/forgot', { config: { auth: { roles: ['admin'] } } }, async () => ({ ok: true }))
  await app.ready()
  t.teardown(() => app.close())
  await app.jwksAuth.refresh()
  const token = issuer.sign({ sub: 'bob', role: 'user' })
  const admin = issuer.sign({ sub: 'root', role: 'admin' })
  t.equal((await app.inject({ url: '/open' })).statusCode, 200)
  t.equal((await app.inject({ url: '/closed' })).statusCode, 401)
  t.same((await app.inject({ url: '/closed', headers: { authorization: `Bearer ${token}` } })).json(), { sub: 'bob' })
  t.equal((await app.inject({ url: '/admin', headers: { authorization: `Bearer ${token}` } })).statusCode, 403)
  t.equal((await app.inject({ url: '/admin', headers: { authorization: `Bearer ${admin}` } })).statusCode, 200)
  t.equal((await app.inject({ url: '/forgot', headers: { authorization: `Bearer ${admin}` } })).statusCode, 401,
    'rules without authentication fail closed')
})

t.test('two Authorization headers are a 400, whether or not the token is cached', async (t) => {
  const issuer = await startTestIssuer()
  t.teardown(() => issuer.close())
  const app = await buildApp(issuer)
  t.teardown(() => app.close())
  const address = await app.listen({ port: 0, host: '127.0.0.1' })
  const token = issuer.sign()
  const twice = (): Promise<number> => new Promise<number>((resolve, reject) => {
    const req = httpRequest(`${address}/me`, { headers: [['Authorization', `Bearer ${token}`], ['authorization', `Bearer ${token}`]] as unknown as Record<string, string> }, (res) => {
      res.resume()
      resolve(res.statusCode ?? 0)
    })
    req.on('error', reject)
    req.end()
  })
  t.equal(await twice(), 400)
  const one = await fetch(`${address}/me`, { headers: { authorization: `Bearer ${token}` } })
  t.equal(one.status, 200)
  // the token is now in the verified-token cache: the cache-hit path still counts the headers
  t.equal(await twice(), 400, 'refused on a cache hit too')
  const spaced = await fetch(`${address}/me`, { headers: { authorization: `Bearer  ${token}` } })
  t.equal(spaced.status, 200, 'other spellings of a cached token take the full parse and pass')
  const trailing = await fetch(`${address}/me`, { headers: { authorization: `Bearer ${token}x` } })
  t.equal(trailing.status, 401, 'a cached token with a byte appended is verified, and fails')
})

/** An app whose only route calls `request.jwtVerify()` (no hook: `global: false`), with the plugin's keys loaded. */
async function jwtVerifyApp (t: Test): Promise<{ issuer: TestIssuer, app: FastifyInstance }> {
  const issuer = await startTestIssuer()
  t.teardown(() => issuer.close())
  const app = Fastify()
  await app.register(jwksAuth, { issuers: [{ issuer: issuer.url, audience: 'portcullis' }], global: false })
  app.get('/v', async (req) => {
    const user = await req.jwtVerify()
    return { sub: (user as { sub: string }).sub }
  })
  await app.ready()
  t.teardown(() => app.close())
  await app.jwksAuth.refresh()
  return { issuer, app }
}

t.test('request.jwtVerify() uses the same key map and pins', async (t) => {
  const { issuer, app } = await jwtVerifyApp(t)
  t.same((await app.inject({ url: '/v', headers: { authorization: `Bearer ${issuer.sign({ sub: 'carol' })}` } })).json(), { sub: 'carol' })
  const other = rsaKey({ label: 'other' })
  const forged = issuer.sign({}, { key: other, kid: issuer.published[0]!.kid })
  t.equal((await app.inject({ url: '/v', headers: { authorization: `Bearer ${forged}` } })).statusCode, 401)
  const hostile = [
    issuer.sign({ aud: 'elsewhere' }),
    issuer.sign({ iss: 'http://attacker.example' }),
    signJwt({ alg: 'none', kid: issuer.published[0]!.kid }, { iss: issuer.url, aud: 'portcullis', sub: 'x', exp: 2e9 }, null),
    signJwt({ alg: 'HS256', kid: issuer.published[0]!.kid }, { iss: issuer.url, aud: 'portcullis', sub: 'x', exp: 2e9 },
      issuer.published[0]!.publicKey.export({ type: 'spki', format: 'pem' }), 'HS256'),
    issuer.sign({}, { kid: 'no-such-kid' }),
    issuer.sign({}, { alg: 'PS256' })
  ]
  for (const token of hostile) {
    const res = await app.inject({ url: '/v', headers: { authorization: `Bearer ${token}` } })
    t.equal(res.statusCode, 401, 'jwtVerify refuses it with a 401')
  }
})

t.test('regression: request.jwtVerify() refuses what the plugin refuses, with a 401 and never a 500', async (t) => {
  const { issuer, app } = await jwtVerifyApp(t)
  const k = issuer.published[0]!
  const now = Math.floor(Date.now() / 1000)
  const h = { alg: 'RS256', kid: k.kid }
  const c = { iss: issuer.url, aud: 'portcullis', sub: 'x', exp: now + 600 }
  const good = signJwt(h, c, k.privateKey)
  const B64U = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'
  const cases: Array<[string, string]> = [
    ['crit header', signJwt({ ...h, crit: ['foo'], foo: 1 }, c, k.privateKey)], // fast-jwt: 500
    ['nbf a string', signJwt(h, { ...c, nbf: String(now + 3600) }, k.privateKey)], // 500
    ['exp a string', signJwt(h, { ...c, exp: String(now + 600) }, k.privateKey)], // 500
    ['payload a JSON array', signJwt(h, b64url('[1]'), k.privateKey)], // 500
    ['iat a string', signJwt(h, { ...c, iat: String(now) }, k.privateKey)], // accepted
    ['iat in the future', signJwt(h, { ...c, iat: now + 3600 }, k.privateKey)], // accepted
    ['permissions a string', signJwt(h, { ...c, permissions: 'admin:all' }, k.privateKey)], // accepted
    ['signature re-spelt', `${good.slice(0, -1)}${B64U[B64U.indexOf(good.at(-1)!) ^ 1]!}`] // accepted
  ]
  for (const [name, token] of cases) {
    const res = await app.inject({ url: '/v', headers: { authorization: `Bearer ${token}` } })
    t.equal(res.statusCode, 401, `${name}: 401`)
    t.notMatch(res.body, /FAST_JWT|fast-jwt/i, `${name}: no library code or message`)
  }
  t.same((await app.inject({ url: '/v', headers: { authorization: `Bearer ${good}` } })).json(), { sub: 'x' }, 'a valid token still passes')
})

t.test('one verification per token: the hook and request.jwtVerify() share one verifier, and @fastify/jwt is gone', async (t) => {
  const issuer = await startTestIssuer()
  t.teardown(() => issuer.close())
  const app = Fastify()
  await app.register(metrics, { defaultMetrics: false })
  await app.register(jwksAuth, { issuers: [{ issuer: issuer.url, audience: 'portcullis' }] })
  app.get('/both', async (req) => {
    const again = await req.jwtVerify() // already authenticated by the hook: no second verification
    return { same: again === req.user, sub: again.sub }
  })
  app.get('/open', { config: { auth: false } }, async (req) => {
    const before = req.user
    const user = await req.jwtVerify()
    return { before, sub: user.sub }
  })
  await app.ready()
  t.teardown(() => app.close())
  await app.jwksAuth.refresh()
  const count = async (cache: string): Promise<number> => {
    const m = /portcullis_auth_verify_duration_seconds_count\{cache="(\w+)"\} (\d+)/g
    let n = 0
    for (const x of (await app.metricsRegistry.metrics()).matchAll(m)) if (x[1] === cache) n += Number(x[2])
    return n
  }
  const token = issuer.sign({ sub: 'dana' })
  t.same((await app.inject({ url: '/both', headers: { authorization: `Bearer ${token}` } })).json(), { same: true, sub: 'dana' })
  t.equal(await count('miss'), 1, 'the hook verified the token once (a miss)')
  t.equal(await count('hit'), 0, 'jwtVerify() in the handler did not verify it again, not even from the cache')
  t.same((await app.inject({ url: '/open', headers: { authorization: `Bearer ${issuer.sign({ sub: 'erin' })}` } })).json(), { before: null, sub: 'erin' },
    'on an auth: false route the user is null until jwtVerify() authenticates')
  t.equal(await count('miss'), 2)
  const noToken = await app.inject({ url: '/open' })
  t.equal(noToken.statusCode, 401, 'jwtVerify() rejects with the same 401')
  t.equal(noToken.headers['www-authenticate'], 'Bearer')
  t.notOk(app.hasDecorator('jwt'), 'no @fastify/jwt decorator: nothing else verifies tokens')
})

t.test('options are validated at registration with messages naming the option', async (t) => {
  const bad: Array<[unknown, RegExp]> = [
    [{}, /"issuers"/],
    [{ issuers: [{ issuer: 'ftp://x', audience: 'a' }] }, /issuers\[0\]\.issuer/],
    [{ issuers: [{ issuer: 'http://x', audience: [] }] }, /issuers\[0\]\.audience/],
    [{ issuers: [{ issuer: 'http://x', audience: 'a', algorithms: ['HS256'] }] }, /issuers\[0\]\.algorithms.*HS256/],
    [{ issuers: [{ issuer: 'http://x', audience: 'a', algorithms: ['none'] }] }, /algorithms/],
    [{ issuers: [{ issuer: 'http://x', audience: 'a' }], clockTolerance: -1 }, /"clockTolerance"/],
    [{ issuers: [{ issuer: 'http://x', audience: 'a' }], refreshInterval: 'soon' }, /"refreshInterval"/],
    [{ issuers: [{ issuer: 'http://x', audience: 'a' }], tokenCacheMax: 1.5 }, /"tokenCacheMax"/],
    [{ issuers: [{ issuer: 'http://x', audience: 'a' }, { issuer: 'http://x', audience: 'b' }] }, /listed twice/]
  ]
  for (const [opts, msg] of bad) t.throws(() => resolveOptions(opts as JwksAuthOptions), msg)
  const app = Fastify()
  app.register(jwksAuth, { issuers: [] })
  await t.rejects(async () => { await app.ready() }, /jwks-auth option "issuers"/, 'a bad option fails the boot')
  const ok = resolveOptions({ issuers: [{ issuer: 'http://a:1/', audience: 'x' }] })
  t.equal(ok.issuers[0]!.jwksUri, 'http://a:1/.well-known/jwks.json')
  t.same(ok.issuers[0]!.algorithms, ['RS256'])
  t.equal(ok.clockToleranceMs, 60_000)
  t.equal(ok.global, true)
})

t.test('auth_success / auth_failure log events carry sub, route, method, ip and duration; never the token', async (t) => {
  const issuer = await startTestIssuer()
  t.teardown(() => issuer.close())
  const lines: string[] = []
  const app = Fastify({ logger: { level: 'info', stream: { write: (s: string) => { lines.push(s) } } } })
  await app.register(jwksAuth, { issuers: [{ issuer: issuer.url, audience: issuer.audience }] })
  app.get('/items/:id', async () => 'ok')
  await app.ready()
  t.teardown(() => app.close())
  await app.jwksAuth.refresh()
  const token = issuer.sign({ sub: 'dave' })
  await app.inject({ url: '/items/1', headers: { authorization: `Bearer ${token}` } })
  await app.inject({ method: 'GET', url: '/items/2', headers: { authorization: `Bearer ${token}x` } })
  const events = lines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => typeof l.event === 'string')
  const ok = events.find((e) => e.event === 'auth_success')
  t.match(ok, { sub: 'dave', route: '/items/:id', method: 'GET', ip: '127.0.0.1', cache: 'miss' })
  t.type(ok?.durationMs, 'number')
  const bad = events.find((e) => e.event === 'auth_failure')
  t.match(bad, { reason: 'bad_signature', route: '/items/:id', method: 'GET', ip: '127.0.0.1' })
  t.type(bad?.durationMs, 'number')
  t.notOk(lines.some((l) => l.includes(token.split('.')[2]!)), 'no log line contains the token')
})
