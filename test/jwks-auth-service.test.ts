import Fastify, { type FastifyInstance } from 'fastify'
import t from 'tap'
import jwksAuth from '@portcullis/jwks-auth'
import metrics from '@portcullis/metrics'
import { authFixture } from './helpers/auth-fixture.js'
import { testBackends } from './helpers/backends.js'

/**
 * The plugin against the real auth service and key store (SQLite: the store's own tests cover both
 * backends): tokens from /auth/login verify; a pre-published key that starts signing needs no
 * kid-miss fetch; a revoked key stops verifying at the next refresh; an immediate rotation is
 * bridged by one kid-miss fetch.
 */
const sqlite = (await testBackends()).find((b) => b.name === 'sqlite')!

t.test('jwks-auth against the auth service', async (t) => {
  const b = await sqlite.open()
  const f = await authFixture(b)
  t.teardown(async () => { await f.service.close(); await b.cleanup() })
  const address = await f.service.app.listen({ port: 0, host: '127.0.0.1' })
  await f.users.add({ username: 'alice', password: 'alice password', role: 'admin', permissions: ['orders:read'] })

  const app: FastifyInstance = Fastify()
  await app.register(metrics, { defaultMetrics: false })
  await app.register(jwksAuth, {
    issuers: [{ issuer: f.config.issuer, jwksUri: `${address}/.well-known/jwks.json`, audience: f.config.audience }],
    refreshInterval: 3600
  })
  app.get('/me', async (req) => req.user)
  await app.ready()
  t.teardown(() => app.close())
  await app.jwksAuth.refresh()
  t.ok(app.jwksAuth.isReady())

  const login = async (): Promise<string> => {
    const res = await f.service.app.inject({ method: 'POST', url: '/auth/login', payload: { username: 'alice', password: 'alice password' } })
    t.equal(res.statusCode, 200, 'login')
    return res.json().access_token as string
  }
  const me = async (token: string): Promise<{ status: number, body: Record<string, unknown> }> => {
    const res = await app.inject({ url: '/me', headers: { authorization: `Bearer ${token}` } })
    return { status: res.statusCode, body: res.json() }
  }
  const kidMisses = async (): Promise<string> => {
    const m = /portcullis_jwks_refresh_total\{result="kid_found"\} (\d+)/.exec(await app.metricsRegistry.metrics())
    return m?.[1] ?? '0'
  }

  const refreshes = async (): Promise<string> => (await app.metricsRegistry.metrics()).split('\n').filter((l) => l.startsWith('portcullis_jwks_refresh_total')).join('\n')

  const first = await login()
  const r1 = await me(first)
  t.equal(r1.status, 200)
  t.match(r1.body, { iss: f.config.issuer, aud: 'portcullis', role: 'admin', permissions: ['orders:read'] })

  // Pre-published rotation: pending key published, seen by our refresh, then activated.
  await f.keys.rotateNow({ activateNow: false })
  await f.service.signer.refresh()
  await app.jwksAuth.refresh()
  await f.keys.rotateNow({ activateNow: true })
  await f.service.signer.refresh()
  const second = await login()
  t.not(second.split('.')[0], first.split('.')[0], 'signed under a new kid')
  t.equal((await me(second)).status, 200, 'the pre-published key verifies')
  t.equal(await kidMisses(), '0', 'without any kid-miss fetch')
  t.equal((await me(first)).status, 200, 'the retired key still verifies its tokens')

  // Revoking the retired key unpublishes it: our next refresh stops it, cached verification included.
  const oldKid = JSON.parse(Buffer.from(first.split('.')[0]!, 'base64url').toString()).kid as string
  await f.keys.revoke(oldKid)
  await f.service.signer.refresh()
  await app.jwksAuth.refresh()
  const fetchesBefore = await refreshes()
  t.equal((await me(first)).status, 401, 'a revoked key stops verifying at the next refresh')
  t.equal(await refreshes(), fetchesBefore, 'its tokens cause no kid-miss fetch (and so do not start the cooldown)')
  t.equal((await me(second)).status, 200)

  // Immediate (not pre-published) rotation: bridged by one kid-miss fetch.
  await f.keys.rotateNow({ activateNow: true })
  await f.service.signer.refresh()
  const third = await login()
  t.equal((await me(third)).status, 200, 'an unannounced key is found by a kid-miss fetch')
  t.equal(await kidMisses(), '1')
})
