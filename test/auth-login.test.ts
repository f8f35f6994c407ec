import { createLocalJWKSet, decodeProtectedHeader, jwtVerify, type JSONWebKeySet } from 'jose'
import t from 'tap'
import { authFixture, type AuthFixture } from './helpers/auth-fixture.js'
import { testBackends } from './helpers/backends.js'

async function verify (f: AuthFixture, token: string, at = f.clock.now): Promise<Record<string, unknown>> {
  const jwks = (await f.service.app.inject({ url: '/.well-known/jwks.json' })).json() as JSONWebKeySet
  const { payload } = await jwtVerify(token, createLocalJWKSet(jwks), {
    issuer: f.config.issuer, audience: f.config.audience, algorithms: ['RS256'], currentDate: new Date(at)
  })
  return payload as Record<string, unknown>
}

async function login (f: AuthFixture, username: string, password: string): Promise<{ statusCode: number, body: Record<string, unknown>, headers: Record<string, unknown> }> {
  const res = await f.service.app.inject({ method: 'POST', url: '/auth/login', payload: { username, password } })
  return { statusCode: res.statusCode, body: res.json(), headers: res.headers }
}

for (const backend of await testBackends()) {
  t.test(backend.name, { skip: backend.skip }, async (t) => {
    const b = await backend.open()
    const f = await authFixture(b, { env: { AUTH_LOGIN_USER_MAX: '3', AUTH_LOGIN_IP_MAX: '20' } })
    t.teardown(async () => { await f.service.close(); await b.cleanup() })
    const { app } = f.service
    const alice = await f.users.add({ username: 'Alice', password: 'correct horse', role: 'admin', permissions: ['orders:read', 'orders:write'] })

    await t.test('login issues an RS256 token that jose verifies (iss, aud, exp) and a refresh token', async (t) => {
      const res = await login(f, 'alice', 'correct horse')
      t.equal(res.statusCode, 200)
      t.equal(res.headers['cache-control'], 'no-store')
      t.equal(res.body.token_type, 'Bearer')
      t.equal(res.body.expires_in, 900)
      t.match(res.body.refresh_token, /^[A-Za-z0-9_-]{43}$/, '256 random bits, base64url')
      const token = res.body.access_token as string
      const header = decodeProtectedHeader(token)
      t.equal(header.alg, 'RS256')
      t.equal(header.kid, f.service.signer.kid)
      const claims = await verify(f, token)
      t.equal(claims.iss, 'http://127.0.0.1:3010', 'the default issuer: AUTH_PORT 3010')
      t.equal(claims.aud, 'portcullis')
      t.equal(claims.sub, alice.id)
      t.equal(claims.role, 'admin')
      t.same(claims.permissions, ['orders:read', 'orders:write'])
      t.equal(claims.exp, Math.floor(f.clock.now / 1000) + 900)
      t.equal(claims.nbf, claims.iat)
      t.match(claims.jti, /^[0-9a-f-]{36}$/)
      t.notOk('scope' in claims, 'user tokens carry no scope')
      await t.rejects(verify(f, token, f.clock.now + 901_000), { code: 'ERR_JWT_EXPIRED' }, 'jose enforces exp')
      const other = (await login(f, 'ALICE', 'correct horse')).body
      t.not((await verify(f, other.access_token as string)).jti, claims.jti, 'usernames are case-insensitive; jti is unique')
    })

    await t.test('wrong password and unknown user get the same 401 and body', async (t) => {
      const wrong = await login(f, 'alice', 'wrong password')
      const unknown = await login(f, 'mallory', 'wrong password')
      t.equal(wrong.statusCode, 401)
      t.equal(unknown.statusCode, 401)
      t.same(wrong.body, { error: 'invalid_credentials', error_description: 'invalid username or password' })
      t.same(unknown.body, wrong.body)
      t.ok(f.logs.some((l) => l.event === 'auth_failure' && l.username === 'mallory'), 'failure logged')
      t.notOk(JSON.stringify(f.logs).includes('wrong password'), 'passwords never reach the log')
    })

    await t.test('per-username limit: 429 with Retry-After, for unknown users too', async (t) => {
      for (const user of ['bob', 'nobody']) {
        const statuses: number[] = []
        let last
        for (let i = 0; i < 4; i++) { last = await login(f, user, 'guess-' + i); statuses.push(last.statusCode) }
        t.same(statuses, [401, 401, 401, 429], user)
        t.ok(Number(last!.headers['retry-after']) > 0 && Number(last!.headers['retry-after']) <= 300, 'Retry-After within the window')
        t.equal(last!.body.error, 'rate_limited')
      }
      const m = await f.service.admin.inject({ url: '/metrics' })
      t.match(m.body, /portcullis_login_failures_total\{reason="rate_limited_user"\} 2/)
    })

    await t.test('per-IP limit: 429 once the address made too many attempts, whatever the usernames', async (t) => {
      const b2 = await backend.open()
      const g = await authFixture(b2, { env: { AUTH_LOGIN_IP_MAX: '4', AUTH_LOGIN_USER_MAX: '100' } })
      t.teardown(async () => { await g.service.close(); await b2.cleanup() })
      const codes: number[] = []
      for (let i = 0; i < 5; i++) {
        codes.push((await g.service.app.inject({ method: 'POST', url: '/auth/login', payload: { username: `u${i}`, password: 'x' }, remoteAddress: '10.0.0.7' })).statusCode)
      }
      t.same(codes, [401, 401, 401, 401, 429])
      const elsewhere = await g.service.app.inject({ method: 'POST', url: '/auth/login', payload: { username: 'u9', password: 'x' }, remoteAddress: '10.0.0.8' })
      t.equal(elsewhere.statusCode, 401, 'another address is not limited')
    })

    await t.test('behind a trusted proxy (AUTH_TRUST_PROXY) the per-IP limit keys on X-Forwarded-For', async (t) => {
      const b3 = await backend.open()
      const g = await authFixture(b3, { env: { AUTH_TRUST_PROXY: '127.0.0.1', AUTH_LOGIN_IP_MAX: '2', AUTH_LOGIN_USER_MAX: '100' } })
      t.teardown(async () => { await g.service.close(); await b3.cleanup() })
      const attempt = async (from: string, forwarded: string): Promise<number> => (await g.service.app.inject({
        method: 'POST', url: '/auth/login', payload: { username: 'zed', password: 'x' }, remoteAddress: from, headers: { 'x-forwarded-for': forwarded }
      })).statusCode
      t.same([await attempt('127.0.0.1', '198.51.100.1'), await attempt('127.0.0.1', '198.51.100.1'), await attempt('127.0.0.1', '198.51.100.1')], [401, 401, 429])
      t.equal(await attempt('127.0.0.1', '198.51.100.2'), 401, 'another client behind the same proxy is not limited')
      t.equal(await attempt('10.9.9.9', '198.51.100.2'), 401, 'an untrusted peer is keyed on its own address')
      t.equal(await attempt('10.9.9.9', '198.51.100.3'), 401)
      t.equal(await attempt('10.9.9.9', '198.51.100.4'), 429, 'whatever X-Forwarded-For it sends')
    })

    await t.test('metrics count issued tokens and failures on the admin listener only', async (t) => {
      const m = await f.service.admin.inject({ url: '/metrics' })
      t.match(m.body, /portcullis_tokens_issued_total\{grant="login"\} 2/)
      t.match(m.body, /portcullis_login_failures_total\{reason="invalid_credentials"\} [1-9]/)
      t.match(m.body, /http_request_duration_seconds_count\{method="POST",route="\/auth\/login",status_code="200"\} 2/)
      t.equal((await app.inject({ url: '/metrics' })).statusCode, 404)
    })
  })
}
