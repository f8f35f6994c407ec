import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { Writable } from 'node:stream'
import Fastify, { type FastifyInstance } from 'fastify'
import { exportJWK, generateKeyPair, SignJWT, type CryptoKey, type JWK } from 'jose'
import t, { type Test } from 'tap'
import { buildService } from '../services/bootstrap.js'
import { serviceConfigFromEnv, type ServiceKind } from '../services/config.js'
import { startTestIssuer } from './helpers/issuer.js'

const AUD = 'portcullis'

interface Issuer { url: string, sign: (claims: Record<string, unknown>) => Promise<string>, tokenRequests: number }

/** A minimal RS256 issuer: JWKS plus a client-credentials endpoint for the order-service's own token. */
async function startIssuer (t: Test): Promise<Issuer> {
  const { privateKey, publicKey } = await generateKeyPair('RS256')
  const jwk: JWK = { ...(await exportJWK(publicKey)), kid: 'k1', alg: 'RS256', use: 'sig' }
  const app = Fastify()
  const issuer: Issuer = {
    url: '',
    tokenRequests: 0,
    sign: (claims) => sign(privateKey, issuer.url, claims)
  }
  app.get('/.well-known/jwks.json', async () => ({ keys: [jwk] }))
  app.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string' }, (_r, b, done) => done(null, Object.fromEntries(new URLSearchParams(b as string))))
  app.post('/oauth/token', async (req, reply) => {
    const form = req.body as Record<string, string>
    if (form.client_id !== 'order-service' || form.client_secret !== 'svc-secret') return reply.code(401).send({ error: 'invalid_client' })
    issuer.tokenRequests++
    return { access_token: await issuer.sign({ sub: 'order-service', scope: 'products:read' }), token_type: 'Bearer', expires_in: 300 }
  })
  issuer.url = await app.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(() => app.close())
  return issuer
}

async function sign (key: CryptoKey, iss: string, claims: Record<string, unknown>): Promise<string> {
  return await new SignJWT({ permissions: [], ...claims })
    .setProtectedHeader({ alg: 'RS256', kid: 'k1' })
    .setIssuer(iss).setAudience(AUD).setIssuedAt().setExpirationTime('5m')
    .sign(key)
}

type Logs = Array<Record<string, unknown>>

async function startService (t: Test, kind: ServiceKind, issuer: string, env: Record<string, string> = {}): Promise<{ app: FastifyInstance, url: string, logs: Logs }> {
  const logs: Logs = []
  const stream = new Writable({ write (chunk, _enc, cb) { logs.push(JSON.parse(String(chunk)) as Record<string, unknown>); cb() } })
  const config = serviceConfigFromEnv(kind, { AUTH_ISSUER: issuer, ...env })
  const app = await buildService({ ...config, port: 0 }, { logger: { level: 'info', stream } })
  const url = await app.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(() => app.close())
  return { app, url, logs }
}

const ALICE = { sub: 'u-alice', role: 'user', permissions: ['order:create', 'order:read'] }
const BOB = { sub: 'u-bob', role: 'user', permissions: ['order:read'] }
const ADMIN = { sub: 'u-admin', role: 'admin', permissions: ['order:create', 'order:read', 'product:write'] }

t.test('three services: an order checks the user and products with the caller\'s identity', async (t) => {
  const iss = await startIssuer(t)
  const user = await startService(t, 'user', iss.url)
  const product = await startService(t, 'product', iss.url)
  const order = await startService(t, 'order', iss.url, { USER_SERVICE_URL: user.url, PRODUCT_SERVICE_URL: product.url })
  const [alice, bob, admin] = await Promise.all([iss.sign(ALICE), iss.sign(BOB), iss.sign(ADMIN)])
  const call = (app: FastifyInstance, method: 'GET' | 'POST', url: string, token?: string, body?: unknown, extra: Record<string, string> = {}) =>
    app.inject({ method, url, ...(body !== undefined ? { payload: body as object } : {}), headers: { ...(token !== undefined ? { authorization: `Bearer ${token}` } : {}), ...extra } })

  const created = await call(order.app, 'POST', '/orders', alice, { items: [{ productId: 'p-1', quantity: 2 }, { productId: 'p-3', quantity: 1 }] }, { 'x-request-id': 'trace-123' })
  t.equal(created.statusCode, 201)
  t.match(created.json(), { sub: 'u-alice', total: 2 * 1200 + 300, requestId: 'trace-123', items: [{ name: 'Portcullis mug' }, { name: 'JWKS sticker pack' }] })
  t.equal(created.headers['x-request-id'], 'trace-123')
  const seen = (logs: Logs) => logs.filter((l) => l.msg === 'request completed').map((l) => ({ reqId: l.reqId, sub: l.sub, url: l.url }))
  t.same(seen(user.logs), [{ reqId: 'trace-123', sub: 'u-alice', url: '/users/me' }], 'user-service saw alice and the request id')
  t.same(seen(product.logs).map((s) => [s.reqId, s.sub]), [['trace-123', 'u-alice'], ['trace-123', 'u-alice']], 'product-service too, for each product')

  const forbidden = await call(order.app, 'POST', '/orders', bob, { items: [{ productId: 'p-1', quantity: 1 }] })
  t.equal(forbidden.statusCode, 403, 'bob lacks order:create')
  t.match(forbidden.headers['www-authenticate'], /insufficient_scope/)
  t.equal((await call(order.app, 'POST', '/orders', alice, { items: [{ productId: 'p-404', quantity: 1 }] })).statusCode, 422, 'unknown product')
  t.equal((await call(order.app, 'POST', '/orders', alice, { items: [] })).statusCode, 400, 'empty order')
  const anonymous = await call(order.app, 'GET', '/orders')
  t.equal(anonymous.statusCode, 401, 'no token')
  t.match(anonymous.headers['www-authenticate'], /^Bearer/, 'a 401 says how to authenticate')
  const tampered = alice.slice(0, alice.lastIndexOf('.') + 5) + (alice[alice.lastIndexOf('.') + 5] === 'A' ? 'B' : 'A') + alice.slice(alice.lastIndexOf('.') + 6)
  t.equal((await call(order.app, 'GET', '/orders', tampered)).statusCode, 401, 'tampered signature')

  await call(order.app, 'POST', '/orders', admin, { items: [{ productId: 'p-2', quantity: 1 }] })
  t.same((await call(order.app, 'GET', '/orders', alice)).json().orders.map((o: { sub: string }) => o.sub), ['u-alice'], 'alice sees her own orders')
  t.equal((await call(order.app, 'GET', '/orders', admin)).json().orders.length, 2, 'admin sees all')
  const id = created.json().id as string
  t.equal((await call(order.app, 'GET', `/orders/${id}`, bob)).statusCode, 403, 'not bob\'s order')
  t.equal((await call(order.app, 'GET', `/orders/${id}`, admin)).statusCode, 200)
  t.equal((await call(order.app, 'GET', '/orders/o-999', alice)).statusCode, 404)

  t.match((await call(user.app, 'GET', '/users/me', bob)).json(), { id: 'u-bob', role: 'user', active: true })
  t.equal((await call(user.app, 'GET', '/users/u-alice', bob)).statusCode, 403, 'bob may not read alice')
  t.equal((await call(user.app, 'GET', '/users/u-alice', alice)).statusCode, 200, 'self')
  t.equal((await call(user.app, 'GET', '/users/u-alice', admin)).statusCode, 200, 'admin')
  t.equal((await call(user.app, 'GET', '/users', bob)).statusCode, 403, 'list is admin-only')
  t.ok((await call(user.app, 'GET', '/users', admin)).json().users.length >= 2)

  t.equal((await call(product.app, 'POST', '/products', alice, { name: 'Hat', price: 999 })).statusCode, 403, 'product:write needed')
  const hat = await call(product.app, 'POST', '/products', admin, { name: 'Hat', price: 999 })
  t.equal(hat.statusCode, 201)
  t.equal((await call(product.app, 'GET', `/products/${hat.json().id as string}`, bob)).json().name, 'Hat')
  t.equal((await call(product.app, 'GET', '/health')).statusCode, 200, 'health needs no token')
})

t.test('order-service enforces order:read: a user without permissions and a products:read client both read /orders with 200 before', async (t) => {
  const iss = await startIssuer(t)
  const order = await startService(t, 'order', iss.url)
  const [nobody, client, bob] = await Promise.all([
    iss.sign({ sub: 'u-nobody', role: 'user', permissions: [] }),
    iss.sign({ sub: 'billing-service', scope: 'products:read' }),
    iss.sign(BOB)
  ])
  for (const [who, token] of [['a user with no permissions', nobody], ['a client with scope products:read', client]] as const) {
    for (const url of ['/orders', '/orders/o-1']) {
      const r = await order.app.inject({ url, headers: { authorization: `Bearer ${token}` } })
      t.equal(r.statusCode, 403, `${who}: GET ${url} is 403`)
      t.match(r.headers['www-authenticate'], /insufficient_scope/)
    }
  }
  t.equal((await order.app.inject({ url: '/orders', headers: { authorization: `Bearer ${bob}` } })).statusCode, 200, 'order:read is enough to list')
})

t.test('one request id end to end: a service logs and forwards the same id, by the gateway\'s rule', async (t) => {
  const iss = await startIssuer(t)
  const user = await startService(t, 'user', iss.url)
  const product = await startService(t, 'product', iss.url)
  const order = await startService(t, 'order', iss.url, { USER_SERVICE_URL: user.url, PRODUCT_SERVICE_URL: product.url })
  const alice = await iss.sign(ALICE)
  // '@', '/', '+' and '=' are allowed by the gateway's rule: the service used to log this id and
  // forward a fresh UUID downstream (two ids for one request)
  const id = 'edge@gw-1/abc+def=='
  const r = await order.app.inject({ method: 'POST', url: '/orders', payload: { items: [{ productId: 'p-1', quantity: 1 }] }, headers: { authorization: `Bearer ${alice}`, 'x-request-id': id } })
  t.equal(r.statusCode, 201)
  t.equal(r.headers['x-request-id'], id)
  t.equal(r.json().requestId, id)
  const completed = (logs: Logs): unknown[] => logs.filter((l) => l.msg === 'request completed').map((l) => l.reqId)
  t.same(completed(order.logs), [id], 'order-service logs the id')
  t.same(completed(user.logs), [id], 'user-service got the same id')
  t.same(completed(product.logs), [id], 'product-service got the same id')
  const bad = await order.app.inject({ url: '/orders', headers: { authorization: `Bearer ${alice}`, 'x-request-id': 'has space' } })
  t.not(bad.headers['x-request-id'], 'has space', 'an id outside the rule is replaced')
  t.same(completed(order.logs).at(-1), bad.headers['x-request-id'], 'and the log carries the replacement')
})

t.test('a dead or hanging downstream service maps to 502 or 504, without library text', async (t) => {
  const iss = await startIssuer(t)
  const user = await startService(t, 'user', iss.url)
  const hang: Server = createServer(() => { /* never answers */ })
  await new Promise<void>((resolve) => hang.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => { hang.closeAllConnections(); hang.close(() => resolve()) }))
  const slow = await startService(t, 'order', iss.url, {
    USER_SERVICE_URL: user.url,
    PRODUCT_SERVICE_URL: `http://127.0.0.1:${(hang.address() as AddressInfo).port}`,
    SERVICE_UPSTREAM_TIMEOUT: '200ms'
  })
  const dead = await startService(t, 'order', iss.url, { USER_SERVICE_URL: user.url, PRODUCT_SERVICE_URL: 'http://127.0.0.1:1' })
  const token = await iss.sign(ALICE)
  const body = { items: [{ productId: 'p-1', quantity: 1 }] }
  const timedOut = await slow.app.inject({ method: 'POST', url: '/orders', payload: body, headers: { authorization: `Bearer ${token}` } })
  t.equal(timedOut.statusCode, 504)
  t.equal(timedOut.json().code, 'PORTCULLIS_UPSTREAM_TIMEOUT')
  const refused = await dead.app.inject({ method: 'POST', url: '/orders', payload: body, headers: { authorization: `Bearer ${token}` } })
  t.equal(refused.statusCode, 502)
  t.notMatch(refused.body, /ECONNREFUSED|undici|at .*\.ts/)
})

t.test('order-service refreshes its catalog in the background with its own client-credentials token', async (t) => {
  const iss = await startIssuer(t)
  const product = await startService(t, 'product', iss.url)
  const order = await startService(t, 'order', iss.url, {
    PRODUCT_SERVICE_URL: product.url,
    SERVICE_CLIENT_ID: 'order-service',
    SERVICE_CLIENT_SECRET: 'svc-secret',
    ORDER_CATALOG_REFRESH: '1h'
  })
  // The first refresh runs when the server starts listening; wait for its log line, not a fixed time.
  await t.resolves(waitFor(() => order.logs.some((l) => l.msg === 'catalog refreshed with the service token')))
  const status = (await order.app.inject({ url: '/orders/catalog-status' })).json()
  t.match(status, { products: 4, lastError: null })
  t.equal(iss.tokenRequests, 1)
  const calls = product.logs.filter((l) => l.msg === 'request completed')
  t.same(calls.map((l) => [l.url, l.sub]), [['/products', 'order-service']], 'product-service saw the service\'s own identity')
})

async function waitFor (cond: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('condition not met in time')
    await new Promise((resolve) => setImmediate(resolve))
  }
}

t.test('CLOCK_SKEW is the services\' leeway on exp (the rotation worker plans with the same S)', async (t) => {
  const issuer = await startTestIssuer()
  t.teardown(() => issuer.close())
  const now = Math.floor(Date.now() / 1000)
  const expired = issuer.sign({ sub: 'u-late', exp: now - 10 })
  const strict = await startService(t, 'user', issuer.url, { CLOCK_SKEW: '2s' })
  const lenient = await startService(t, 'user', issuer.url)
  const me = (app: FastifyInstance) => app.inject({ url: '/users/me', headers: { authorization: `Bearer ${expired}` } })
  t.equal((await me(strict.app)).statusCode, 401, 'expired 10 s ago, 2 s of leeway: refused')
  t.equal((await me(lenient.app)).statusCode, 200, 'the default 60 s of leeway still accepts it')
  t.throws(() => serviceConfigFromEnv('user', { CLOCK_SKEW: 'a while' }), { message: /CLOCK_SKEW/ })
})
