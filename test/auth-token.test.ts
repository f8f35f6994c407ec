import { createLocalJWKSet, jwtVerify, type JSONWebKeySet } from 'jose'
import t from 'tap'
import { authFixture, type AuthFixture } from './helpers/auth-fixture.js'
import { testBackends } from './helpers/backends.js'

async function token (f: AuthFixture, form: Record<string, string>, headers: Record<string, string> = {}): Promise<{ statusCode: number, body: Record<string, unknown>, headers: Record<string, unknown> }> {
  const res = await f.service.app.inject({
    method: 'POST', url: '/oauth/token', headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers }, payload: new URLSearchParams(form).toString()
  })
  return { statusCode: res.statusCode, body: res.json(), headers: res.headers }
}

const basic = (id: string, secret: string): string => 'Basic ' + Buffer.from(`${encodeURIComponent(id)}:${encodeURIComponent(secret)}`).toString('base64')

for (const backend of await testBackends()) {
  t.test(backend.name, { skip: backend.skip }, async (t) => {
    const b = await backend.open()
    const f = await authFixture(b)
    t.teardown(async () => { await f.service.close(); await b.cleanup() })
    const { clientSecret } = await f.clients.add({ clientId: 'svc-orders', scopes: ['orders:read', 'products:read'] })
    const { clientSecret: auditSecret } = await f.clients.add({ clientId: 'svc-audit', scopes: ['audit'], audience: 'audit-api' })
    const oracle = async (tok: string, audience = f.config.audience): Promise<Record<string, unknown>> => {
      const jwks = (await f.service.app.inject({ url: '/.well-known/jwks.json' })).json() as JSONWebKeySet
      return (await jwtVerify(tok, createLocalJWKSet(jwks), { issuer: f.config.issuer, audience, currentDate: new Date(f.clock.now) })).payload as Record<string, unknown>
    }

    await t.test('client_credentials (form, client_secret_post): token with scope as a space-separated string', async (t) => {
      const r = await token(f, { grant_type: 'client_credentials', client_id: 'svc-orders', client_secret: clientSecret })
      t.equal(r.statusCode, 200)
      t.equal(r.headers['cache-control'], 'no-store')
      t.equal(r.body.token_type, 'Bearer')
      t.equal(r.body.expires_in, 900)
      t.equal(r.body.scope, 'orders:read products:read')
      t.notOk('refresh_token' in r.body, 'no refresh token for client credentials (RFC 6749 4.4.3)')
      const claims = await oracle(r.body.access_token as string)
      t.equal(claims.sub, 'svc-orders')
      t.equal(claims.scope, 'orders:read products:read')
      t.equal(claims.aud, 'portcullis')
      t.notOk('role' in claims)
    })

    await t.test('client_credentials (JSON body, HTTP Basic), a narrower scope, the client\'s own audience', async (t) => {
      const res = await f.service.app.inject({ method: 'POST', url: '/oauth/token', headers: { authorization: basic('svc-orders', clientSecret) }, payload: { grant_type: 'client_credentials', scope: 'orders:read' } })
      t.equal(res.statusCode, 200)
      t.equal((await oracle(res.json().access_token)).scope, 'orders:read')
      const audit = await token(f, { grant_type: 'client_credentials', scope: '' }, { authorization: basic('svc-audit', auditSecret) })
      t.equal(audit.statusCode, 200, 'an empty scope parameter counts as omitted')
      t.equal((await oracle(audit.body.access_token as string, 'audit-api')).aud, 'audit-api')
      const m = await f.service.admin.inject({ url: '/metrics' })
      t.match(m.body, /portcullis_tokens_issued_total\{grant="client_credentials"\} 3/)
    })

    await t.test('wrong secret, unknown client, no credentials: 401 invalid_client', async (t) => {
      const wrong = await token(f, { grant_type: 'client_credentials', client_id: 'svc-orders', client_secret: 'nope' })
      t.equal(wrong.statusCode, 401)
      t.same(wrong.body, { error: 'invalid_client', error_description: 'client authentication failed' })
      t.notOk(wrong.headers['www-authenticate'], 'no Basic challenge when Basic was not used')
      const unknown = await token(f, { grant_type: 'client_credentials', client_id: 'svc-ghost', client_secret: clientSecret })
      t.same([unknown.statusCode, unknown.body], [401, wrong.body], 'unknown client: same answer')
      const basicWrong = await token(f, { grant_type: 'client_credentials' }, { authorization: basic('svc-orders', 'bad') })
      t.equal(basicWrong.statusCode, 401)
      t.match(basicWrong.headers['www-authenticate'], /^Basic realm="portcullis"/, 'Basic gets its challenge back (RFC 6749 5.2)')
      const none = await token(f, { grant_type: 'client_credentials' })
      t.equal(none.statusCode, 401)
      const both = await token(f, { grant_type: 'client_credentials', client_id: 'svc-orders', client_secret: clientSecret }, { authorization: basic('svc-orders', clientSecret) })
      t.same([both.statusCode, both.body.error], [400, 'invalid_request'], 'two authentication methods at once')
    })

    await t.test('a scope the client does not have: 400 invalid_scope', async (t) => {
      const r = await token(f, { grant_type: 'client_credentials', client_id: 'svc-orders', client_secret: clientSecret, scope: 'orders:read admin' })
      t.equal(r.statusCode, 400)
      t.same(r.body, { error: 'invalid_scope', error_description: 'scope "admin" is not granted to this client' })
    })

    await t.test('unsupported and missing grant types, repeated parameters', async (t) => {
      const pw = await token(f, { grant_type: 'password', username: 'a', password: 'b' })
      t.same([pw.statusCode, pw.body], [400, { error: 'unsupported_grant_type', error_description: 'grant_type "password" is not supported' }])
      const none = await token(f, { client_id: 'svc-orders' })
      t.same([none.statusCode, none.body.error], [400, 'invalid_request'])
      t.match(none.body.error_description, /grant_type/)
      const repeated = await f.service.app.inject({
        method: 'POST', url: '/oauth/token', headers: { 'content-type': 'application/x-www-form-urlencoded' }, payload: 'grant_type=client_credentials&grant_type=refresh_token'
      })
      t.same([repeated.statusCode, repeated.json().error], [400, 'invalid_request'])
      const noToken = await token(f, { grant_type: 'refresh_token' })
      t.same([noToken.statusCode, noToken.body.error], [400, 'invalid_request'])
    })

    await t.test('refresh_token grant: rotation through /oauth/token, invalid_grant on reuse', async (t) => {
      await f.users.add({ username: 'erin', password: 'erin password', permissions: ['orders:read'] })
      const login = (await f.service.app.inject({ method: 'POST', url: '/auth/login', payload: { username: 'erin', password: 'erin password' } })).json()
      const r = await token(f, { grant_type: 'refresh_token', refresh_token: login.refresh_token })
      t.equal(r.statusCode, 200)
      t.equal(r.headers['cache-control'], 'no-store')
      t.same((await oracle(r.body.access_token as string)).permissions, ['orders:read'])
      const reuse = await token(f, { grant_type: 'refresh_token', refresh_token: login.refresh_token })
      t.same([reuse.statusCode, reuse.body.error], [400, 'invalid_grant'])
      const after = await token(f, { grant_type: 'refresh_token', refresh_token: r.body.refresh_token as string })
      t.same([after.statusCode, after.body.error], [400, 'invalid_grant'], 'the family was revoked')
    })

    await t.test('only the secret\'s SHA-256 is stored', async (t) => {
      const rows = await b.db.query<{ secret_hash: string }>('SELECT secret_hash FROM clients')
      t.notOk(rows.some((r) => r.secret_hash.includes(clientSecret)))
      t.ok(rows.every((r) => /^[0-9a-f]{64}$/.test(r.secret_hash)))
    })
  })
}
