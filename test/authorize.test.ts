import Fastify, { type FastifyInstance } from 'fastify'
import t from 'tap'
import jwksAuth from '@portcullis/jwks-auth'
import authorize, { requirePermission, requireRole, requireScope } from '@portcullis/authorize'
import { startTestIssuer, type TestIssuer } from './helpers/issuer.js'

async function buildApp (issuer: TestIssuer): Promise<FastifyInstance> {
  const app = Fastify()
  await app.register(jwksAuth, { issuers: [{ issuer: issuer.url, audience: 'portcullis' }] })
  const ok = async (): Promise<{ ok: true }> => ({ ok: true })
  app.get('/any', ok)
  app.get('/cfg/admin', { config: { auth: { roles: ['admin', 'owner'] } } }, ok)
  app.get('/cfg/orders', { config: { auth: { permissions: ['orders:read', 'orders:write'] } } }, ok)
  app.get('/cfg/scope', { config: { auth: { scopes: ['inventory'] } } }, ok)
  app.get('/cfg/both', { config: { auth: { roles: ['admin'], permissions: ['orders:read'] } } }, ok)
  app.get('/fn/admin', { preHandler: requireRole('admin') }, ok)
  app.get('/fn/orders', { preHandler: requirePermission('orders:read', 'orders:write') }, ok)
  app.get('/fn/scope', { preHandler: requireScope('inventory', 'reports') }, ok)
  await app.ready()
  await app.jwksAuth.refresh()
  return app
}

t.test('roles, permissions and scopes: 200, 401 and 403 with the right headers and generic bodies', async (t) => {
  const issuer = await startTestIssuer()
  t.teardown(() => issuer.close())
  const app = await buildApp(issuer)
  t.teardown(() => app.close())
  const tokens = {
    admin: issuer.sign({ role: 'admin', permissions: ['orders:read'] }),
    owner: issuer.sign({ role: 'owner' }),
    user: issuer.sign({ role: 'user', permissions: ['orders:read'] }),
    writer: issuer.sign({ role: 'user', permissions: ['orders:read', 'orders:write', 'x:y'] }),
    noRole: issuer.sign({}),
    service: issuer.sign({ sub: 'client:inventory', scope: 'inventory reports' }),
    narrow: issuer.sign({ sub: 'client:other', scope: 'reports' })
  }
  const table: Array<[string, keyof typeof tokens | null, number]> = [
    ['/any', 'noRole', 200],
    ['/cfg/admin', 'admin', 200],
    ['/cfg/admin', 'owner', 200],
    ['/cfg/admin', 'user', 403],
    ['/cfg/admin', 'noRole', 403],
    ['/cfg/admin', null, 401],
    ['/cfg/orders', 'writer', 200],
    ['/cfg/orders', 'user', 403], // has one of the two: all are required
    ['/cfg/orders', null, 401],
    ['/cfg/scope', 'service', 200],
    ['/cfg/scope', 'narrow', 403],
    ['/cfg/scope', 'admin', 403],
    ['/cfg/both', 'admin', 200],
    ['/cfg/both', 'writer', 403],
    ['/fn/admin', 'admin', 200],
    ['/fn/admin', 'user', 403],
    ['/fn/admin', null, 401],
    ['/fn/orders', 'writer', 200],
    ['/fn/orders', 'user', 403],
    ['/fn/scope', 'service', 200],
    ['/fn/scope', 'narrow', 403]
  ]
  for (const [url, who, status] of table) {
    const headers = who === null ? {} : { authorization: `Bearer ${tokens[who]}` }
    const res = await app.inject({ url, headers })
    t.equal(res.statusCode, status, `${url} as ${who ?? 'anonymous'}: ${status}`)
    if (status === 401) {
      // no token at all: a plain challenge without an error code (RFC 6750 3.1)
      t.equal(res.headers['www-authenticate'], 'Bearer')
      t.same(res.json(), { statusCode: 401, code: 'PORTCULLIS_AUTH_INVALID_TOKEN', error: 'Unauthorized', message: 'Missing or invalid bearer token' })
    }
    if (status === 403) {
      t.equal(res.headers['www-authenticate'], 'Bearer error="insufficient_scope"')
      t.same(res.json(), { statusCode: 403, code: 'PORTCULLIS_AUTH_FORBIDDEN', error: 'Forbidden', message: 'Insufficient permissions' },
        'the body does not say which right is missing')
    }
  }
  const bad = await app.inject({ url: '/cfg/admin', headers: { authorization: 'Bearer not.a.token' } })
  t.equal(bad.statusCode, 401, 'an invalid token on a rules route is a 401, not a 403')
  t.equal(bad.headers['www-authenticate'], 'Bearer error="invalid_token"', 'a bad token gets the invalid_token code')
})

t.test('request.user is frozen: a handler cannot change what later requests see', async (t) => {
  const issuer = await startTestIssuer()
  t.teardown(() => issuer.close())
  const app = Fastify()
  await app.register(jwksAuth, { issuers: [{ issuer: issuer.url, audience: 'portcullis' }] })
  app.get('/mutate', async (req) => {
    const u = req.user as unknown as { role: string, permissions: string[] }
    t.throws(() => { u.role = 'admin' })
    t.throws(() => { u.permissions.push('all:all') })
    return { role: req.user?.role ?? null }
  })
  await app.ready()
  t.teardown(() => app.close())
  await app.jwksAuth.refresh()
  const token = issuer.sign({ role: 'user' })
  for (let i = 0; i < 2; i++) {
    t.same((await app.inject({ url: '/mutate', headers: { authorization: `Bearer ${token}` } })).json(), { role: 'user' })
  }
})

t.test('bad route rules fail at boot, naming the route', async (t) => {
  for (const [rules, msg] of [
    [{ roles: 'admin' }, /GET \/x: config\.auth\.roles must be an array/],
    [{ role: ['admin'] }, /config\.auth\.role is not a known rule/],
    [{ permissions: [''] }, /config\.auth\.permissions must be an array of non-empty strings/],
    [true, /config\.auth must be false or/]
  ] as const) {
    const app = Fastify()
    await app.register(authorize)
    t.throws(() => app.get('/x', { config: { auth: rules as never } }, async () => 'x'), msg)
    await app.close()
  }
})

t.test('authorize alone (another authentication sets request.user) enforces route rules', async (t) => {
  const app = Fastify()
  app.decorateRequest('user', null)
  app.addHook('onRequest', async (req) => {
    if (req.headers['x-test-role'] !== undefined) {
      (req as unknown as { user: unknown }).user = { sub: 's', role: req.headers['x-test-role'], permissions: [], scope: [] }
    }
  })
  await app.register(authorize)
  app.get('/a', { config: { auth: { roles: ['admin'] } } }, async () => 'ok')
  await app.ready()
  t.teardown(() => app.close())
  t.equal((await app.inject({ url: '/a' })).statusCode, 401)
  t.equal((await app.inject({ url: '/a', headers: { 'x-test-role': 'user' } })).statusCode, 403)
  t.equal((await app.inject({ url: '/a', headers: { 'x-test-role': 'admin' } })).statusCode, 200)
})

t.test('regression: config.auth rules of a route declared before the plugin was registered are enforced, not ignored', async (t) => {
  const issuer = await startTestIssuer()
  t.teardown(() => issuer.close())
  const app = Fastify()
  const ok = async (): Promise<{ ok: true }> => ({ ok: true })
  // Declared first: authorize's onRoute hook never sees this route, the authentication hook still covers it.
  app.get('/early/admin', { config: { auth: { roles: ['admin'] } } }, ok)
  app.get('/early/orders', { config: { auth: { permissions: ['orders:write'] } } }, ok)
  await app.register(jwksAuth, { issuers: [{ issuer: issuer.url, audience: 'portcullis' }] })
  app.get('/late/admin', { config: { auth: { roles: ['admin'] } } }, ok)
  await app.ready()
  t.teardown(() => app.close())
  await app.jwksAuth.refresh()
  const user = issuer.sign({ role: 'user', permissions: ['orders:read'] })
  const admin = issuer.sign({ role: 'admin', permissions: ['orders:write'] })
  const get = async (url: string, token?: string): Promise<{ status: number, auth: unknown }> => {
    const res = await app.inject({ url, headers: token === undefined ? {} : { authorization: `Bearer ${token}` } })
    return { status: res.statusCode, auth: res.headers['www-authenticate'] }
  }
  t.same(await get('/early/admin', user), { status: 403, auth: 'Bearer error="insufficient_scope"' }, 'the role rule holds')
  t.same(await get('/early/orders', user), { status: 403, auth: 'Bearer error="insufficient_scope"' }, 'the permission rule holds')
  t.equal((await get('/early/admin', admin)).status, 200)
  t.equal((await get('/early/orders', admin)).status, 200)
  t.same(await get('/early/admin'), { status: 401, auth: 'Bearer' }, 'no token: 401 with a plain challenge')
  t.same(await get('/late/admin', user), { status: 403, auth: 'Bearer error="insufficient_scope"' }, 'routes declared after still work')
  t.equal((await get('/late/admin', admin)).status, 200)
})
