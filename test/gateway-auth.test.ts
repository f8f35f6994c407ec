import t, { type Test } from 'tap'
import { buildGateway, type Gateway } from '../gateway/server.js'
import { parseGatewayConfig } from '../gateway/config.js'
import { echoUpstream, rawRequest, type EchoUpstream } from './helpers/upstream.js'
import { startTestIssuer, type TestIssuer } from './helpers/issuer.js'

interface Env { gw: Gateway, base: string, issuer: TestIssuer, api: EchoUpstream, admin: EchoUpstream, orders: EchoUpstream, pub: EchoUpstream }

async function start (t: Test): Promise<Env> {
  const issuer = await startTestIssuer()
  const [api, admin, orders, pub] = await Promise.all([echoUpstream('api'), echoUpstream('admin'), echoUpstream('orders'), echoUpstream('public')])
  const gw = await buildGateway({
    config: parseGatewayConfig({
      issuers: [{ issuer: issuer.url, audience: 'portcullis' }],
      routes: [
        { prefix: '/api', upstream: api.url },
        { prefix: '/admin', upstream: admin.url, roles: ['admin'] },
        { prefix: '/orders', upstream: orders.url, permissions: ['order:read'] },
        { prefix: '/public', upstream: pub.url, auth: false },
        // a public prefix on the protected upstream's own server: a traversal here would land on it
        { prefix: '/pub2', upstream: `${api.url}/public`, auth: false }
      ]
    }, 'test'),
    logger: false
  })
  await gw.app.listen({ port: 0, host: '127.0.0.1' })
  await issuer.waitForFetches(1)
  await gw.app.jwksAuth.refresh() // single-flight: waits for the first load to finish
  t.teardown(async () => {
    await gw.close()
    await Promise.all([issuer.close(), api.close(), admin.close(), orders.close(), pub.close()])
  })
  const addr = gw.app.server.address()
  return { gw, base: `http://127.0.0.1:${typeof addr === 'object' && addr !== null ? addr.port : 0}`, issuer, api, admin, orders, pub }
}

const bearer = (token: string): Record<string, string> => ({ authorization: `Bearer ${token}` })
type Echo = { headers: Record<string, string | undefined> }

t.test('auth per route, roles and permissions per route, identity headers', async (t) => {
  const { base, issuer, api, gw } = await start(t)
  t.equal((await gw.admin.inject({ url: '/health/ready' })).statusCode, 200, 'ready once the JWKS was fetched')

  t.equal((await rawRequest(base, '/public/x')).status, 200, 'auth: false route needs no token')
  const none = await rawRequest(base, '/api/x')
  t.equal(none.status, 401)
  t.equal(none.headers['www-authenticate'], 'Bearer', 'no token: a challenge without an error code (RFC 6750 3.1)')
  t.same(Object.keys(none.json()).sort(), ['code', 'error', 'message', 'statusCode'], 'the one error shape')
  const junk = await rawRequest(base, '/api/x', { headers: bearer('not.a.token') })
  t.equal(junk.status, 401)
  t.equal(junk.headers['www-authenticate'], 'Bearer error="invalid_token"', 'a bad token: invalid_token')
  const foreign = issuer.sign({ aud: 'someone-else' })
  t.equal((await rawRequest(base, '/api/x', { headers: bearer(foreign) })).status, 401, 'wrong audience')
  t.equal(api.seen.length, 0, 'nothing unauthenticated reached the protected upstream')

  const token = issuer.sign({ sub: 'alice', role: 'user', permissions: ['order:read', 'product:list'] })
  const ok = await rawRequest(base, '/api/x', { headers: { ...bearer(token), 'x-user-id': 'root', 'x-user-role': 'admin', 'x-user-permissions': '*' } })
  t.equal(ok.status, 200)
  const h = ok.json<Echo>().headers
  t.equal(h['x-user-id'], 'alice', 'spoofed identity replaced by the verified one')
  t.equal(h['x-user-role'], 'user')
  t.equal(h['x-user-permissions'], 'order:read,product:list')
  t.equal(h.authorization, `Bearer ${token}`, 'Authorization forwarded for services that verify themselves')
  t.ok(h['x-request-id'])

  const trick = await rawRequest(base, '/api/x', { headers: { ...bearer(token), connection: 'close, x-user-id, x-user-role, x-user-permissions, authorization, x-request-id' } })
  t.equal(trick.status, 200)
  const th = trick.json<Echo>().headers
  t.equal(th['x-user-id'], 'alice', 'identity headers survive being named in Connection')
  t.equal(th['x-user-role'], 'user')
  t.equal(th['x-user-permissions'], 'order:read,product:list')
  t.equal(th.authorization, `Bearer ${token}`)
  t.ok(th['x-request-id'])

  const forbidden = await rawRequest(base, '/admin/x', { headers: bearer(token) })
  t.equal(forbidden.status, 403, 'role user on an admin route')
  t.equal(forbidden.headers['www-authenticate'], 'Bearer error="insufficient_scope"')
  const adminToken = issuer.sign({ sub: 'root', role: 'admin', permissions: [] })
  t.equal((await rawRequest(base, '/admin/x', { headers: bearer(adminToken) })).status, 200)
  t.equal((await rawRequest(base, '/orders/1', { headers: bearer(token) })).status, 200, 'has order:read')
  t.equal((await rawRequest(base, '/orders/1', { headers: bearer(adminToken) })).status, 403, 'lacks order:read')
  t.equal((await rawRequest(base, '/nope', { headers: bearer(token) })).status, 404, 'unknown path with a token: 404')
  t.equal((await rawRequest(base, '/nope')).status, 401, 'unknown path without a token: 401 (default deny), never proxied')
})

t.test('CR/LF, non-Latin-1 and lone-surrogate claims become header-safe values, never a 5xx', async (t) => {
  const { base, issuer, api } = await start(t)
  const token = issuer.sign({ sub: 'eve\r\nx-injected: 1', role: 'rôle✓\u0000', permissions: ['a:b', 'ü,x:y', 'bad\ud800'] })
  const r = await rawRequest(base, '/api/x', { headers: bearer(token) })
  t.equal(r.status, 200)
  const h = api.seen[0]!.headers
  t.equal(h['x-injected'], undefined, 'no header injection')
  t.equal(h['x-user-id'], 'eve%0D%0Ax-injected: 1')
  t.equal(decodeURIComponent(h['x-user-id'] as string), 'eve\r\nx-injected: 1', 'decodes back to the claim')
  t.equal(h['x-user-role'], 'r%C3%B4le%E2%9C%93%00')
  t.equal(h['x-user-permissions'], 'a:b,%C3%BC%2Cx:y,bad%EF%BF%BD', 'list separator inside a value is encoded')
})

t.test('path-bypass variants never reach a protected upstream without a token', async (t) => {
  const { base, api, admin, orders, issuer } = await start(t)
  const variants = [
    '/%61pi/x', '/%61%70%69/x', '/a%70i', '/%2561pi/x',
    '/public/../api/x', '/public/%2e%2e/api/x', '/public/%2E%2E/api/x', '/public/..%2fapi/x', '/public/..%2Fapi/x',
    '/public/%2e%2e%2fapi/x', '/public%2f..%2fapi/x', '/public/.%2e/api/x', '/public/..\\api\\x', '/public/..%5capi/x',
    '/public/./../api/x', '/./api/x', '/api/./x', '/api/../api/x',
    '//api/x', '///api/x', '/api//x', '/public//../api/x',
    '/API/x', '/Api/x', '/aPI', '/ADMIN/x', '/Orders/1',
    '/api', '/api/', '/api?x=/public', '/api;/x', '/api%00/x', '/api%20/x', '/api%2fx',
    'http://evil.example/api/x', 'http://127.0.0.1/api/x',
    '/public/..;/api/x', '/public/%2e%2e;/api/x', '/pub2/../x', '/pub2/%2e%2e/x', '/pub2/..%2f..%2fx', '/pub2/%2e%2e%2f%2e%2e%2fapi',
    '/pub2/..;/x', '/pub2/..\\x', '/pub2%2f..%2fx', '/pub2/.%2e/x'
  ]
  for (const p of variants) {
    let status: number
    try {
      status = (await rawRequest(base, p)).status
    } catch {
      status = 0 // the server refused the request line outright
    }
    t.ok(status === 0 || status >= 400, `${p} -> ${status}`)
  }
  t.equal(api.seen.length + admin.seen.length + orders.seen.length, 0, 'not one unauthenticated request reached a protected upstream')
  t.equal((await rawRequest(base, '/pub2/ok')).status, 200, 'the public prefix on the same server works')
  t.same(api.seen.map((r) => r.url), ['/public/ok'], 'and only under its own path')
  // sanity: the same upstream is reachable with a token, so the zero above is meaningful
  t.equal((await rawRequest(base, '/%61pi/x', { headers: bearer(issuer.sign()) })).status, 200, 'an encoded prefix routes to /api, where auth applies')
  t.equal(api.seen.at(-1)!.url, '/x')
})

t.test('not ready until every issuer JWKS has been fetched', async (t) => {
  const issuer = await startTestIssuer()
  issuer.mode = 'error'
  const up = await echoUpstream()
  const gw = await buildGateway({
    config: parseGatewayConfig({ issuers: [{ issuer: issuer.url, audience: 'portcullis' }], routes: [{ prefix: '/api', upstream: up.url }] }, 'test'),
    logger: false
  })
  t.teardown(async () => { await gw.close(); await issuer.close(); await up.close() })
  await gw.app.ready()
  await issuer.waitForFetches(1)
  await gw.app.jwksAuth.refresh() // joins the failing first load
  const r = await gw.admin.inject({ url: '/health/ready' })
  t.equal(r.statusCode, 503)
  t.match(r.json().reason, /JWKS/)
  issuer.mode = 'ok'
  await gw.app.jwksAuth.refresh()
  t.equal((await gw.admin.inject({ url: '/health/ready' })).statusCode, 200)
  t.equal((await gw.admin.inject({ url: '/health/live' })).statusCode, 200)
})
