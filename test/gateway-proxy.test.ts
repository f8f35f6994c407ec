import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:http'
import { connect } from 'node:net'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { buildGateway, gatewayLogger, type Gateway } from '../gateway/server.js'
import { loadGatewayConfig, parseGatewayConfig } from '../gateway/config.js'
import { DEFAULT_CONFIG_PATH } from '../gateway/main.js'
import { upstreamBase, upstreamPath } from '../gateway/routes.js'
import { echoUpstream, rawRequest, type EchoUpstream } from './helpers/upstream.js'
import { startTestIssuer } from './helpers/issuer.js'
import { logSink } from './helpers/log-sink.js'

async function start (t: Test, routes: (a: EchoUpstream, b: EchoUpstream) => unknown[], extra: Record<string, unknown> = {}): Promise<{ gw: Gateway, base: string, a: EchoUpstream, b: EchoUpstream }> {
  const a = await echoUpstream('a')
  const b = await echoUpstream('b')
  t.teardown(async () => { await a.close(); await b.close() }) // also when the gateway refuses to boot
  const gw = await buildGateway({ config: parseGatewayConfig({ routes: routes(a, b), ...extra }, 'test'), logger: false })
  await gw.app.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(async () => { await gw.close() })
  const addr = gw.app.server.address()
  return { gw, base: `http://127.0.0.1:${typeof addr === 'object' && addr !== null ? addr.port : 0}`, a, b }
}

const publicRoutes = (a: EchoUpstream, b: EchoUpstream): unknown[] => [
  { prefix: '/a', upstream: a.url, auth: false },
  { prefix: '/b', upstream: `${b.url}/v2`, auth: false, methods: ['GET', 'POST'] }
]

t.test('routes by prefix, rewrites to the upstream path, 404s everything else without proxying', async (t) => {
  const { base, a, b, gw } = await start(t, publicRoutes)
  const r1 = await rawRequest(base, '/a/items/1?x=1&y=2')
  t.equal(r1.status, 200)
  t.equal(r1.json().upstream, 'a')
  t.equal(r1.json().url, '/items/1?x=1&y=2')
  const r2 = await rawRequest(base, '/b/things', { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"n":1}' })
  t.equal(r2.status, 200)
  t.equal(r2.json().url, '/v2/things')
  t.equal(r2.json().body, '{"n":1}', 'request body forwarded')
  t.equal((await rawRequest(base, '/b')).json().url, '/v2')

  const before = a.seen.length + b.seen.length
  for (const p of ['/', '/c/x', '/ab', '/A/x', '/favicon.ico']) {
    const r = await rawRequest(base, p)
    t.equal(r.status, 404, `${p} is 404`)
    t.same(r.json(), { statusCode: 404, code: 'PORTCULLIS_NOT_FOUND', error: 'Not Found', message: 'No route matches this path' })
  }
  t.equal((await rawRequest(base, '/b/x', { method: 'DELETE' })).status, 404, 'a method the route does not list is 404')
  t.equal(a.seen.length + b.seen.length, before, 'nothing unknown reached an upstream')

  const m = await gw.admin.inject({ url: '/metrics' })
  t.match(m.body, /http_request_duration_seconds_count\{method="GET",route="\/a\/\*",status_code="200"\} 1/)
  t.notMatch(m.body, /items\/1/, 'raw URLs are never labels')
  t.equal((await rawRequest(base, '/metrics')).status, 404, 'no /metrics on the public listener')
  t.equal((await rawRequest(base, '/health/ready')).status, 404, 'no health routes on the public listener')
})

t.test('upstream paths: an upstream URL ending in a slash, rewritePrefix, a root prefix, escaped prefixes; never another host', async (t) => {
  const { base, a, b } = await start(t, (a, b) => [
    { prefix: '/slash', upstream: `${a.url}/base/`, auth: false },
    { prefix: '/rw', upstream: `${a.url}/ignored`, rewritePrefix: '/other', auth: false },
    { prefix: '/plain', upstream: a.url, auth: false },
    { prefix: '/', upstream: `${b.url}/root`, auth: false }
  ])
  const cases: Array<[string, number, string, string]> = [
    // path asked, status, upstream, path the upstream got
    ['/slash', 200, 'a', '/base'], // was a 500: reply-from refused `/base` under a base URL of `/base/`
    ['/slash/', 200, 'a', '/base/'],
    ['/slash/x?q=1', 200, 'a', '/base/x?q=1'],
    ['/sl%61sh/x', 200, 'a', '/base/x'], // the router matched the decoded prefix; the rest keeps its escapes
    ['/slash/a%20b', 200, 'a', '/base/a%20b'],
    ['/rw', 200, 'a', '/other'],
    ['/rw/y?z=%20', 200, 'a', '/other/y?z=%20'],
    ['/plain/p', 200, 'a', '/p'],
    // the root prefix: the base path, then the whole path (a 400 for all but `/` before)
    ['/', 200, 'b', '/root/'],
    ['/x/y', 200, 'b', '/root/x/y'],
    ['/slashx', 200, 'b', '/root/slashx'], // not under /slash: the root route's
    ['//x', 200, 'b', '/root//x']
  ]
  for (const [path, status, upstream, got] of cases) {
    const r = await rawRequest(base, path)
    t.equal(r.status, status, `${path}: ${r.status}`)
    t.same([r.json().upstream, r.json().url], [upstream, got], `${path} reached ${upstream} as ${got}`)
  }
  const before = a.seen.length + b.seen.length
  // `/plain//evil.example/x` would be `//evil.example/x` on a root upstream: another host
  t.equal((await rawRequest(base, '/plain//evil.example/x')).status, 400, 'a path naming another host is refused')
  t.equal(a.seen.length + b.seen.length, before, 'and never forwarded')
})

t.test('upstreamPath: the base path, then the raw rest after the prefix; undefined off the base or for another host', async (t) => {
  const cases: Array<[string, string, string, string | undefined]> = [
    ['/pub', '/pub', '', '/'],
    ['/pub?a=1', '/pub', '', '/'],
    ['/pub/x?a=1', '/pub', '/v2', '/v2/x'],
    ['/p%75b/a%2Fb', '/pub', '/v2', '/v2/a%2Fb'],
    ['/p%C3%BCb/x', '/p\u00fcb', '', '/x'], // a two-byte escape decoded as one character
    ['/x/y', '', '/root', '/root/x/y'],
    ['/rw;x', '/rw', '/other', undefined], // would be /other;x: beside the base path, not under it
    ['/pub//evil.example/x', '/pub', '', undefined], // //evil.example/x: another host
    ['/pub/x', '/api', '', undefined] // the prefix does not line up
  ]
  for (const [url, prefix, base, expected] of cases) t.equal(upstreamPath(url, prefix, base), expected, `${url} under ${prefix || '(root)'} onto ${base || '(root)'}`)
  t.equal(upstreamBase('http://up/base/', undefined), '/base')
  t.equal(upstreamBase('http://up', undefined), '')
  t.equal(upstreamBase('http://up/ignored', '/other/'), '/other')
})

t.test('a redirect to the upstream\'s base path points under the route\'s prefix; absolute ones are kept', async (t) => {
  const up = createServer((req, res) => {
    res.statusCode = 302
    res.setHeader('location', String(req.headers['x-to']))
    res.end()
  })
  await new Promise<void>((resolve) => up.listen(0, '127.0.0.1', resolve))
  t.teardown(() => up.close())
  const url = `http://127.0.0.1:${(up.address() as AddressInfo).port}`
  const gw = await buildGateway({ config: parseGatewayConfig({ routes: [{ prefix: '/pub', upstream: `${url}/v2`, auth: false }] }, 'test'), logger: false })
  t.teardown(() => gw.close())
  for (const [to, expected] of [['/v2/next', '/pub/next'], ['/elsewhere', '/elsewhere'], ['http://other.example/v2/x', 'http://other.example/v2/x']]) {
    const r = await gw.app.inject({ url: '/pub/x', headers: { 'x-to': to } })
    t.equal(r.statusCode, 302)
    t.equal(r.headers.location, expected, `Location ${to} -> ${expected}`)
  }
})

t.test('dot segments, backslashes and bad escapes are refused before routing decides anything', async (t) => {
  const { base, a, b } = await start(t, publicRoutes)
  for (const p of ['/a/../b/x', '/a/%2e%2e/b/x', '/a/..%2fb', '/a/%2E%2E%2Fb', '/a/.%2e/b', '/a/x\\..\\y', '/a/%5c..%5cb', '/a/%zz', '/a/./x', '/a/..;/b', '/a/.;x/b']) {
    const r = await rawRequest(base, p)
    t.equal(r.status, 400, `${p} -> 400`)
    t.match(r.json().code, /^PORTCULLIS_BAD_(PATH|REQUEST)$/)
  }
  t.equal(a.seen.length + b.seen.length, 0)
})

t.test('header hygiene: what the upstream receives', async (t) => {
  const { base, a } = await start(t, publicRoutes)
  const r = await rawRequest(base, '/a/h', {
    headers: {
      'x-user-id': 'admin',
      'X-User-Role': 'admin',
      'x-user-permissions': 'everything:*',
      'x-portcullis-internal': '1',
      'x-forwarded-for': '6.6.6.6',
      'x-forwarded-host': 'evil.example',
      'x-forwarded-proto': 'https',
      'x-forwarded-port': '443',
      'x-real-ip': '6.6.6.6',
      forwarded: 'for=6.6.6.6',
      'x-http-method-override': 'DELETE',
      'x-method-override': 'DELETE',
      'x-http-method': 'DELETE',
      authorization: 'Bearer abc',
      'x-request-id': 'client-req-42',
      'x-custom': 'kept',
      // the hop-by-hop trick: ask the proxy to drop the headers it adds or must forward
      connection: 'keep-alive, x-request-id, x-forwarded-for, x-real-ip, authorization, x-user-id'
    }
  })
  t.equal(r.status, 200)
  const h = r.json<{ headers: Record<string, string> }>().headers
  for (const name of ['x-user-role', 'x-user-permissions', 'x-portcullis-internal', 'x-forwarded-port', 'forwarded', 'x-http-method-override', 'x-method-override', 'x-http-method']) {
    t.equal(h[name], undefined, `${name} removed`)
  }
  t.equal(h['x-user-id'], undefined, 'no identity on a public route')
  t.equal(h['x-forwarded-for'], '127.0.0.1', 'x-forwarded-for rewritten from the socket')
  t.equal(h['x-real-ip'], '127.0.0.1')
  t.equal(h['x-forwarded-proto'], 'http')
  t.match(h['x-forwarded-host'], /^127\.0\.0\.1:\d+$/)
  t.equal(h.authorization, 'Bearer abc', 'Authorization forwarded even when listed in Connection')
  t.equal(h['x-request-id'], 'client-req-42', 'the request id is forwarded even when listed in Connection')
  t.equal(r.headers['x-request-id'], h['x-request-id'], 'the client gets the same request id')
  t.equal(h['x-custom'], 'kept')
  t.equal(a.seen[0]!.method, 'GET', 'method override ignored')

  const kept = await rawRequest(base, '/a/h', { headers: { 'x-request-id': 'client-req-42' } })
  t.equal(kept.json<{ headers: Record<string, string> }>().headers['x-request-id'], 'client-req-42', 'a well-formed incoming id is kept')
  t.equal(kept.headers['x-request-id'], 'client-req-42')
  const bad = await rawRequest(base, '/a/h', { headers: { 'x-request-id': 'has spaces "and" quotes' } })
  const replaced = bad.json<{ headers: Record<string, string> }>().headers['x-request-id']
  t.not(replaced, 'has spaces "and" quotes', 'a malformed id is replaced')
  t.match(replaced, /^[0-9a-f]{16}-[0-9a-z]+$/, 'by a generated <process prefix>-<counter> id')
  const ids = new Set<string>()
  for (let i = 0; i < 5; i++) ids.add((await rawRequest(base, '/a/h')).headers['x-request-id'] as string)
  ids.add(replaced!)
  t.equal(ids.size, 6, 'generated ids are distinct')
})

t.test('Upgrade: h2c and Expect are not forwarded (no 500)', async (t) => {
  const { base } = await start(t, publicRoutes)
  const r = await rawRequest(base, '/a/up', { headers: { connection: 'Upgrade, HTTP2-Settings', upgrade: 'h2c', 'http2-settings': 'AAMAAABkAARAAAAAAAIAAAAA' } })
  t.equal(r.status, 200)
  const h = r.json<{ headers: Record<string, string> }>().headers
  t.equal(h.upgrade, undefined)
  t.equal(h['http2-settings'], undefined)
})

t.test('forwarding headers from a trusted proxy are kept and extended', async (t) => {
  const { base } = await start(t, publicRoutes, { trustProxy: ['127.0.0.1'] })
  const r = await rawRequest(base, '/a/x', { headers: { 'x-forwarded-for': '203.0.113.7', 'x-forwarded-proto': 'https', 'x-forwarded-host': 'api.example.com' } })
  const h = r.json<{ headers: Record<string, string> }>().headers
  t.equal(h['x-forwarded-for'], '203.0.113.7, 127.0.0.1')
  t.equal(h['x-real-ip'], '203.0.113.7')
  t.equal(h['x-forwarded-proto'], 'https')
  t.equal(h['x-forwarded-host'], 'api.example.com')
})

/** A writable that parses each JSON log line into `lines`. */

t.test('one access-log line per request with the request id; secrets redacted', async (t) => {
  const { lines, sink } = logSink()
  const up = await echoUpstream()
  const gw = await buildGateway({ config: parseGatewayConfig({ routes: [{ prefix: '/a', upstream: up.url, auth: false }] }, 'test'), logger: gatewayLogger('info', sink) })
  t.teardown(async () => { await gw.close(); await up.close() })
  const r = await gw.app.inject({ url: '/a/x?q=1', headers: { 'x-request-id': 'trace-7', authorization: 'Bearer secret-token' } })
  t.equal(r.statusCode, 200)
  const access = lines.filter((l) => l.msg === 'request completed')
  t.equal(access.length, 1, 'one line, not Fastify\'s two')
  t.match(access[0], { reqId: 'trace-7', method: 'GET', url: '/a/x?q=1', route: '/a/*', statusCode: 200, name: 'gateway' })
  gw.app.log.info({ headers: { authorization: 'Bearer secret-token', cookie: 'sid=1' }, token: 'abc', password: 'pw' }, 'probe')
  const probe = lines.find((l) => l.msg === 'probe')!
  t.same(probe.headers, { authorization: '[redacted]', cookie: '[redacted]' })
  t.equal(probe.token, '[redacted]')
  t.equal(probe.password, '[redacted]')
  t.notMatch(JSON.stringify(lines), /secret-token/, 'the token never reaches a log line')
})

t.test('an authenticated request logs one info line (the access line, with sub); auth_success is debug, auth_failure info', async (t) => {
  const { lines, sink } = logSink()
  const issuer = await startTestIssuer()
  const up = await echoUpstream()
  const config = parseGatewayConfig({ issuers: [{ issuer: issuer.url, audience: 'portcullis' }], routes: [{ prefix: '/a', upstream: up.url }] }, 'test')
  const info = await buildGateway({ config, logger: gatewayLogger('info', sink) })
  t.teardown(async () => { await info.close(); await up.close(); await issuer.close() })
  await info.app.ready()
  await info.app.jwksAuth.refresh()
  const token = issuer.sign({ sub: 'carol' })
  t.equal((await info.app.inject({ url: '/a/x', headers: { authorization: `Bearer ${token}` } })).statusCode, 200)
  t.equal(lines.length, 1, 'one line for an authenticated request')
  t.match(lines[0], { msg: 'request completed', sub: 'carol', route: '/a/*', statusCode: 200 })
  lines.length = 0
  t.equal((await info.app.inject({ url: '/a/x', headers: { authorization: `Bearer ${token}x` } })).statusCode, 401)
  t.match(lines.find((l) => l.event === 'auth_failure'), { reason: 'bad_signature', level: 30 })

  lines.length = 0
  const debug = await buildGateway({ config, logger: gatewayLogger('debug', sink) })
  t.teardown(() => debug.close())
  await debug.app.ready()
  await debug.app.jwksAuth.refresh()
  await debug.app.inject({ url: '/a/x', headers: { authorization: `Bearer ${token}` } })
  t.match(lines.find((l) => l.event === 'auth_success'), { sub: 'carol', level: 20 }, 'still available at debug')
})

t.test('the shipped example route file sends /auth/login to the auth service\'s /auth/login', async (t) => {
  const a = await echoUpstream('auth')
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-example-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  // every upstream of the example at the echo server (same paths); the issuer stays as shipped
  const file = join(dir, 'routes.yaml')
  writeFileSync(file, readFileSync(DEFAULT_CONFIG_PATH, 'utf8').replace(/upstream: http:\/\/127\.0\.0\.1:30\d\d/g, `upstream: ${a.url}`))
  const gw = await buildGateway({ config: loadGatewayConfig(file), logger: false })
  await gw.app.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(async () => { await gw.close(); await a.close() })
  const base = `http://127.0.0.1:${(gw.app.server.address() as AddressInfo).port}`
  for (const p of ['/auth/login', '/auth/refresh', '/auth/logout']) {
    const r = await rawRequest(base, p, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' })
    t.equal(r.status, 200, `${p} is public`)
    t.equal(r.json().url, p, `${p} reaches the auth service at ${p}`)
  }
})

t.test('two routes sharing a name keep their own rate limits (5 and 50 both answered ratelimit-limit: 5)', async (t) => {
  const { base, gw } = await start(t, (a, b) => [
    { name: 'shared', prefix: '/a', upstream: a.url, auth: false, rateLimit: { max: 5, timeWindow: 60 } },
    { name: 'shared', prefix: '/b', upstream: b.url, auth: false, rateLimit: { max: 50, timeWindow: 60 } }
  ])
  const ra = await rawRequest(base, '/a/x')
  const rb = await rawRequest(base, '/b/x')
  t.equal(ra.status, 200)
  t.equal(rb.status, 200)
  t.equal(ra.headers['ratelimit-limit'], '5')
  t.equal(rb.headers['ratelimit-limit'], '50')
  for (let i = 0; i < 4; i++) await rawRequest(base, '/a/x')
  t.equal((await rawRequest(base, '/a/x')).status, 429, 'the 6th request on /a is over its budget of 5')
  const after = await rawRequest(base, '/b/x')
  t.equal(after.status, 200, '/b keeps its own budget')
  t.equal(after.headers['ratelimit-remaining'], '48')
  const m = (await gw.admin.inject({ url: '/metrics' })).body
  t.match(m, /portcullis_rate_limit_rejections_total\{route="shared"\} 1/, "the route's name still labels its 429s")
})

t.test("upstream hop-by-hop headers never reach the client, and the client's Connection: close is honoured", async (t) => {
  const { base, a } = await start(t, publicRoutes)
  a.handle((_req, res) => {
    res.setHeader('connection', 'keep-alive, x-upstream-hop')
    res.setHeader('keep-alive', 'timeout=600')
    res.setHeader('x-upstream-hop', 'for the gateway only')
    res.setHeader('proxy-connection', 'keep-alive')
    res.setHeader('x-kept', 'yes')
    res.end('ok')
  })
  const r = await rawRequest(base, '/a/x')
  t.equal(r.status, 200)
  t.equal(r.headers['x-kept'], 'yes', 'end-to-end headers pass')
  for (const h of ['keep-alive', 'x-upstream-hop', 'proxy-connection']) t.equal(r.headers[h], undefined, `no ${h}`)
  t.not(r.headers.connection, 'keep-alive, x-upstream-hop', "not the upstream's Connection")

  // a client asking to close gets Connection: close and a closed socket, not the upstream's keep-alive
  const { port } = new URL(base)
  const closed = await new Promise<{ head: string, ms: number }>((resolve, reject) => {
    const started = Date.now()
    let head = ''
    const s = connect(Number(port), '127.0.0.1', () => { s.write('GET /a/x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n') })
    s.setEncoding('utf8').on('data', (d: string) => { head += d })
    s.on('close', () => { resolve({ head, ms: Date.now() - started }) })
    s.on('error', reject)
    s.setTimeout(5000, () => { s.destroy(); reject(new Error('the gateway kept the socket open')) })
  })
  t.match(closed.head, /^HTTP\/1\.1 200/)
  t.match(closed.head, /\r\nconnection: close\r\n/i)
  t.notMatch(closed.head, /keep-alive/i)
  t.ok(closed.ms < 5000, `socket closed after ${closed.ms} ms`)
})
