import t from 'tap'
import { authFixture } from './helpers/auth-fixture.js'
import { testBackends } from './helpers/backends.js'

for (const backend of await testBackends()) {
  t.test(backend.name, { skip: backend.skip }, async (t) => {
    const b = await backend.open()
    const f = await authFixture(b, { env: { AUTH_ISSUER: 'https://auth.example.test/' } })
    t.teardown(async () => { await f.service.close(); await b.cleanup() })
    const { app, admin } = f.service

    await t.test('JWKS: public members only, Cache-Control within the pre-publish rule, ETag and 304', async (t) => {
      const res = await app.inject({ url: '/.well-known/jwks.json' })
      t.equal(res.statusCode, 200)
      t.match(res.headers['content-type'], /^application\/json/)
      const maxAge = Number(/max-age=(\d+)/.exec(String(res.headers['cache-control']))![1])
      t.ok(maxAge > 0 && maxAge <= 3600 / 2 && maxAge <= 300, `max-age ${maxAge} <= KEY_PREPUBLISH/2 and <= VERIFIER_CACHE_MAX`)
      const body = res.json() as { keys: Array<Record<string, string>> }
      t.equal(body.keys.length, 1)
      t.same(Object.keys(body.keys[0]!).sort(), ['alg', 'e', 'kid', 'kty', 'n', 'use'])
      t.same([body.keys[0]!.kty, body.keys[0]!.alg, body.keys[0]!.use], ['RSA', 'RS256', 'sig'])
      const etag = res.headers.etag as string
      t.match(etag, /^"[A-Za-z0-9_-]+"$/)
      const again = await app.inject({ url: '/.well-known/jwks.json', headers: { 'if-none-match': etag } })
      t.equal(again.statusCode, 304)
      t.equal(again.body, '')
      t.equal(again.headers.etag, etag)
      t.equal((await app.inject({ url: '/.well-known/jwks.json', headers: { 'if-none-match': `"other", W/${etag}` } })).statusCode, 304, 'weak and listed validators match')
      t.equal((await app.inject({ url: '/.well-known/jwks.json', headers: { 'if-none-match': '"stale"' } })).statusCode, 200)

      await f.keys.rotateNow({ activateNow: false })
      await f.service.signer.refresh()
      const changed = await app.inject({ url: '/.well-known/jwks.json', headers: { 'if-none-match': etag } })
      t.equal(changed.statusCode, 200, 'a new pending key changes the ETag')
      t.equal(changed.json().keys.length, 2)
      t.not(changed.headers.etag, etag)
    })

    await t.test('discovery document', async (t) => {
      const res = await app.inject({ url: '/.well-known/openid-configuration' })
      t.equal(res.statusCode, 200)
      const d = res.json()
      t.equal(d.issuer, 'https://auth.example.test', 'issuer without a trailing slash')
      t.equal(d.jwks_uri, 'https://auth.example.test/.well-known/jwks.json')
      t.equal(d.token_endpoint, 'https://auth.example.test/oauth/token')
      t.same(d.grant_types_supported, ['client_credentials', 'refresh_token'])
      t.same(d.id_token_signing_alg_values_supported, ['RS256'])
      t.match(res.headers['cache-control'], /max-age=\d+/)
    })

    await t.test('admin: live, ready only with an active key and a reachable store, metrics', async (t) => {
      t.equal((await admin.inject({ url: '/health/live' })).statusCode, 200)
      t.equal((await admin.inject({ url: '/health/ready' })).statusCode, 200)
      const m = await admin.inject({ url: '/metrics' })
      t.match(m.body, /portcullis_tokens_issued_total\{grant="login"\} 0/)
      t.match(m.body, /portcullis_login_failures_total\{reason="invalid_credentials"\} 0/)
      t.match(m.body, /http_request_duration_seconds_count\{method="GET",route="\/.well-known\/jwks.json",status_code="200"\}/)
      t.equal((await app.inject({ url: '/health/ready' })).statusCode, 404, 'health is not on the public listener')
    })

    await t.test('not ready and 503 temporarily_unavailable while no key is active', async (t) => {
      const b2 = await backend.open()
      const g = await authFixture(b2, { activeKey: false })
      t.teardown(async () => { await g.service.close(); await b2.cleanup() })
      await g.users.add({ username: 'mia', password: 'mia password' })
      const ready = await g.service.admin.inject({ url: '/health/ready' })
      t.equal(ready.statusCode, 503)
      t.match(ready.json().reason, /no usable signing key/)
      const login = await g.service.app.inject({ method: 'POST', url: '/auth/login', payload: { username: 'mia', password: 'mia password' } })
      t.equal(login.statusCode, 503)
      t.equal(login.headers['retry-after'], '1')
      t.same(login.json(), { error: 'temporarily_unavailable', error_description: 'no signing key is available, retry later' })
      t.equal((await b2.db.query('SELECT * FROM refresh_families')).length, 0, 'no refresh token was stored')
      t.same((await g.service.app.inject({ url: '/.well-known/jwks.json' })).json(), { keys: [] })
      await g.keys.rotateNow({ activateNow: true })
      await g.service.signer.refresh()
      t.equal((await g.service.admin.inject({ url: '/health/ready' })).statusCode, 200, 'ready once a key is active')
    })
  })
}

t.test('config: boot refuses bad settings with a message naming the variable', async (t) => {
  const { authConfigFromEnv } = await import('../auth/config.js')
  const { DEFAULT_KEY_TIMINGS } = await import('../store/key-timings.js')
  const bad: Array<[Record<string, string>, RegExp]> = [
    [{ AUTH_PORT: 'http' }, /AUTH_PORT: expected an integer/],
    [{ AUTH_ISSUER: 'ftp://x' }, /AUTH_ISSUER/],
    [{ AUTH_KEY_POLL_INTERVAL: '5s' }, /AUTH_KEY_POLL_INTERVAL: must be shorter than SIGNER_PROPAGATION/],
    [{ REFRESH_IDLE_TTL: '2d', REFRESH_ABSOLUTE_TTL: '1d' }, /REFRESH_ABSOLUTE_TTL: must be >= REFRESH_IDLE_TTL/],
    [{ AUTH_BODY_LIMIT: '10' }, /AUTH_BODY_LIMIT: must be >= 256/],
    [{ AUTH_TRUST_PROXY: 'everyone' }, /AUTH_TRUST_PROXY/],
    [{ PASSWORD_SCRYPT_N: '1000' }, /PASSWORD_SCRYPT_N: must be a power of two/],
    [{ AUTH_PORT: '3010', AUTH_ADMIN_PORT: '3010' }, /AUTH_ADMIN_PORT: must differ/],
    [{ AUTH_DRAIN_DELAY: 'a while' }, /AUTH_DRAIN_DELAY: expected a duration/]
  ]
  for (const [env, msg] of bad) t.throws(() => authConfigFromEnv(env, DEFAULT_KEY_TIMINGS), { code: 'PORTCULLIS_CONFIG', message: msg }, Object.keys(env).join(','))
  const ok = authConfigFromEnv({ AUTH_TRUST_PROXY: '10.0.0.0/8, 127.0.0.1' }, DEFAULT_KEY_TIMINGS)
  t.same(ok.trustProxy, ['10.0.0.0/8', '127.0.0.1'])
  t.equal(ok.jwksMaxAge, 300)
  t.equal(ok.issuer, 'http://127.0.0.1:3010')
  t.match(ok, { host: '127.0.0.1', port: 3010, adminHost: '127.0.0.1', adminPort: 8091, drainDelay: 5 }, 'defaults: not Grafana\'s 3000 nor the Pushgateway\'s 9091')
  t.match(authConfigFromEnv({ AUTH_HOST: '0.0.0.0', AUTH_DRAIN_DELAY: '0' }, DEFAULT_KEY_TIMINGS), { host: '0.0.0.0', adminHost: '127.0.0.1', drainDelay: 0 },
    'the admin listener stays on its own host when AUTH_HOST opens the public one (regression: it shared AUTH_HOST)')
  t.match(authConfigFromEnv({ AUTH_ADMIN_HOST: '0.0.0.0', AUTH_DRAIN_DELAY: '1500ms' }, DEFAULT_KEY_TIMINGS), { host: '127.0.0.1', adminHost: '0.0.0.0', drainDelay: 1.5 })
  t.equal(authConfigFromEnv({ AUTH_HOST: '0.0.0.0', AUTH_PORT: '4000' }, DEFAULT_KEY_TIMINGS).issuer, 'http://127.0.0.1:4000', 'issuer follows the port')
})
