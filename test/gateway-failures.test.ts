import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { STATUS_CODES } from 'node:http'
import { connect, type AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { buildGateway, gatewayLogger, type Gateway } from '../gateway/server.js'
import { logSink } from './helpers/log-sink.js'
import { parseGatewayConfig } from '../gateway/config.js'
import { classify, clientError, countsAgainstBreaker } from '../gateway/upstream.js'
import { echoUpstream, rawRequest, type EchoUpstream } from './helpers/upstream.js'
import { freePort } from './helpers/ports.js'
import { startGatewayProcess } from './helpers/gateway-process.js'

async function start (t: Test, file: Record<string, unknown>, now?: () => number): Promise<{ gw: Gateway, base: string }> {
  const gw = await buildGateway({ config: parseGatewayConfig(file, 'test'), logger: false, now })
  await gw.app.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(() => gw.close())
  const addr = gw.app.server.address()
  return { gw, base: `http://127.0.0.1:${typeof addr === 'object' && addr !== null ? addr.port : 0}` }
}

async function upstream (t: Test): Promise<EchoUpstream> {
  const u = await echoUpstream()
  t.teardown(() => u.close())
  return u
}

async function metric (gw: Gateway, re: RegExp): Promise<string | undefined> {
  return re.exec((await gw.admin.inject({ url: '/metrics' })).body)?.[1]
}

t.test('connection refused -> 502 in the JSON error shape, counted by kind', async (t) => {
  const dead = await freePort() // nothing listens there
  const { gw, base } = await start(t, { routes: [{ prefix: '/x', upstream: `http://127.0.0.1:${dead}`, auth: false }] })
  const r = await rawRequest(base, '/x/y')
  t.equal(r.status, 502)
  t.same(r.json(), { statusCode: 502, code: 'PORTCULLIS_UPSTREAM_UNAVAILABLE', error: 'Bad Gateway', message: 'Upstream service unavailable' })
  t.notMatch(r.body, /ECONNREFUSED|127\.0\.0\.1/, 'no library message or address leaks')
  t.equal(await metric(gw, /portcullis_upstream_errors_total\{upstream="http:\/\/127\.0\.0\.1:\d+",kind="refused"\} (\d+)/), '1')
})

t.test('a slow upstream -> 504 at the route\'s headers timeout', async (t) => {
  const slow = await upstream(t)
  slow.handle(() => {}) // never answers
  const { gw, base } = await start(t, {
    timeouts: { headers: '10s' },
    routes: [{ prefix: '/slow', upstream: slow.url, auth: false, timeouts: { headers: '300ms' } }]
  })
  const t0 = Date.now()
  const r = await rawRequest(base, '/slow/x')
  const waited = Date.now() - t0
  t.equal(r.status, 504)
  t.equal(r.json().code, 'PORTCULLIS_UPSTREAM_TIMEOUT')
  t.ok(waited >= 290 && waited < 5000, `answered at the route timeout (300 ms), not the default 10 s: ${waited} ms`)
  t.equal(await metric(gw, /kind="headers_timeout"\} (\d+)/), '1')
})

t.test('idempotent requests are retried once on a connection error; others are not', async (t) => {
  const flaky = await upstream(t)
  let hits = 0
  flaky.handle((req, res) => {
    hits++
    if (hits % 2 === 1) { res.socket?.destroy(); return } // every first attempt dies
    res.end(JSON.stringify({ ok: true, method: req.method }))
  })
  const { base } = await start(t, { routes: [{ prefix: '/f', upstream: flaky.url, auth: false }] })
  const r = await rawRequest(base, '/f/a')
  t.equal(r.status, 200, 'GET succeeded on the retry')
  t.equal(hits, 2)
  hits = 0
  const p = await rawRequest(base, '/f/a', { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"a":1}' })
  t.equal(p.status, 502, 'POST is not retried')
  t.equal(hits, 1)
})

t.test('the circuit breaker opens after N failures, fails fast with Retry-After, then recovers through one probe', async (t) => {
  const up = await upstream(t)
  let healthy = false
  up.handle((_req, res) => { if (healthy) res.end('{"ok":true}'); else res.socket?.destroy() })
  let now = 1_000_000
  const { gw, base } = await start(t, {
    breaker: { failureThreshold: 3, resetTimeout: '10s' },
    routes: [{ prefix: '/b', upstream: up.url, auth: false }]
  }, () => now)
  const state = (): Promise<string | undefined> => metric(gw, /portcullis_circuit_breaker_state\{upstream="[^"]+"\} (\d)/)

  for (let i = 0; i < 3; i++) t.equal((await rawRequest(base, '/b/x', { method: 'POST' })).status, 502)
  t.equal(await state(), '1', 'open')
  const seen = up.seen.length
  const fast = await rawRequest(base, '/b/x')
  t.equal(fast.status, 503)
  t.equal(fast.json().code, 'PORTCULLIS_CIRCUIT_OPEN')
  t.equal(fast.headers['retry-after'], '10')
  t.equal(up.seen.length, seen, 'an open breaker sends nothing upstream')

  now += 10_000 // half-open: the probe fails -> open again
  t.equal((await rawRequest(base, '/b/x', { method: 'POST' })).status, 502, 'the probe went through')
  t.equal(await state(), '1', 'a failed probe re-opens')
  t.equal((await rawRequest(base, '/b/x')).status, 503)

  now += 10_000
  healthy = true
  t.equal((await rawRequest(base, '/b/x')).status, 200, 'a successful probe')
  t.equal(await state(), '0', 'closed again')
  t.equal((await rawRequest(base, '/b/x')).status, 200)
  t.equal(await metric(gw, /kind="circuit_open"\} (\d+)/), '2')
})

t.test('SIGTERM drains: an in-flight slow request completes, then the process exits 0', async (t) => {
  const slow = await upstream(t)
  let release: (() => void) | undefined
  const arrived = new Promise<void>((resolve) => {
    slow.handle((_req, res) => {
      release = () => res.end('{"slow":"done"}')
      resolve()
    })
  })
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-gw-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const cfg = join(dir, 'routes.json')
  writeFileSync(cfg, JSON.stringify({ routes: [{ prefix: '/slow', upstream: slow.url, auth: false }] }))
  const gp = await startGatewayProcess({ GATEWAY_CONFIG: cfg })
  t.teardown(gp.kill)
  const { child, exited, base } = gp

  const inflight = rawRequest(base, '/slow/x')
  await arrived
  child.kill('SIGTERM')
  await gp.waitFor('draining')
  await t.rejects(rawRequest(base, '/slow/x'), 'a new connection is refused while draining')
  t.equal(child.exitCode, null, 'still running while a request is in flight')
  release!()
  const r = await inflight
  t.equal(r.status, 200)
  t.equal(r.body, '{"slow":"done"}')
  t.equal(await exited, 0, 'clean exit after the drain')
  t.match(gp.output(), /gateway stopped/)
})

t.test('the gateway out of file descriptors is not an upstream failure: 503 of its own, no breaker count', async (t) => {
  for (const code of ['EMFILE', 'ENFILE']) {
    const err = new Error(`connect ${code}`, { cause: Object.assign(new Error(code), { code }) })
    t.equal(classify(err), 'local_resources', `${code} is the gateway's own`)
    const answer = clientError('local_resources', err) as Error & { statusCode?: number, code?: string }
    t.equal(answer.statusCode, 503)
    t.equal(answer.code, 'PORTCULLIS_GATEWAY_OVERLOADED')
  }
  t.equal(classify(Object.assign(new Error('x'), { code: 'ECONNREFUSED' })), 'refused', 'a refused connect stays the upstream\'s')
  t.equal(countsAgainstBreaker('local_resources'), false)
  for (const kind of ['refused', 'reset', 'dns', 'connect_timeout', 'headers_timeout', 'body_timeout', 'other'] as const) {
    t.equal(countsAgainstBreaker(kind), true, `${kind} counts`)
  }
})

/** Sends raw bytes on one connection and returns everything the gateway wrote before closing it. */
function rawExchange (port: number, bytes: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let got = ''
    const s = connect(port, '127.0.0.1', () => { s.write(bytes) })
    s.setEncoding('utf8').on('data', (d: string) => { got += d })
    s.on('close', () => { resolve(got) })
    s.on('error', reject)
    s.setTimeout(5000, () => { s.destroy(); reject(new Error(`the socket stayed open; got ${JSON.stringify(got)}`)) })
  })
}

t.test('errors raised before routing (431, malformed request) have the JSON shape with a code and Connection: close', async (t) => {
  const up = await upstream(t)
  const gw = await buildGateway({ config: parseGatewayConfig({ routes: [{ prefix: '/a', upstream: up.url, auth: false }] }, 'test'), logger: false })
  t.teardown(() => gw.close())
  await gw.app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = gw.app.server.address() as AddressInfo
  const cases: Array<[string, number, string]> = [
    [`GET /a/x HTTP/1.1\r\nHost: gw\r\nX-Big: ${'y'.repeat(20_000)}\r\n\r\n`, 431, 'PORTCULLIS_HEADERS_TOO_LARGE'],
    ['GET /a/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n', 400, 'PORTCULLIS_BAD_REQUEST'],
    ['NOT-HTTP\r\n\r\n', 400, 'PORTCULLIS_BAD_REQUEST']
  ]
  for (const [bytes, status, code] of cases) {
    const got = await rawExchange(port, bytes)
    const [head, body] = got.split('\r\n\r\n') as [string, string]
    t.match(head, new RegExp(`^HTTP/1\\.1 ${status} `), `${status}`)
    t.match(head, /\r\nconnection: close/i, `${status}: Connection: close, the socket is closed next`)
    t.same(JSON.parse(body), { statusCode: status, code, error: STATUS_CODES[status], message: JSON.parse(body).message })
  }
})

t.test('a request on a kept-alive connection while the gateway closes: 503 in the JSON shape, with Connection: close', async (t) => {
  const slow = await upstream(t)
  let release: (() => void) | undefined
  const arrived = new Promise<void>((resolve) => {
    slow.handle((_req, res) => { release = () => res.end('done'); resolve() })
  })
  const gw = await buildGateway({ config: parseGatewayConfig({ routes: [{ prefix: '/a', upstream: slow.url, auth: false }] }, 'test'), logger: false })
  await gw.app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = gw.app.server.address() as AddressInfo
  // one keep-alive connection: the first request holds the gateway open while it closes
  const s = connect(port, '127.0.0.1')
  t.teardown(() => { s.destroy() })
  let got = ''
  s.setEncoding('utf8').on('data', (d: string) => { got += d })
  const second = new Promise<void>((resolve) => { s.on('close', () => resolve()) })
  s.write('GET /a/one HTTP/1.1\r\nHost: gw\r\n\r\n')
  await arrived
  const closed = gw.close()
  await new Promise((resolve) => setTimeout(resolve, 100)) // let close() begin
  s.write('GET /a/two HTTP/1.1\r\nHost: gw\r\n\r\n')
  await new Promise((resolve) => setTimeout(resolve, 100))
  release!()
  await closed
  await second
  const responses = got.split(/(?=HTTP\/1\.1 )/)
  t.match(responses[0], /^HTTP\/1\.1 200 /, 'the in-flight request completes')
  t.match(responses[1], /^HTTP\/1\.1 503 /, 'the next one on the same connection is refused')
  t.match(responses[1], /\r\nconnection: close/i)
  t.match(responses[1], /"code":"PORTCULLIS_SHUTTING_DOWN"/)
})

t.test('an upstream that refuses every connection: the log holds the throttled refusal lines only, not a warning with a stack per request from the proxy library', async (t) => {
  const dead = await freePort() // nothing listens there
  const { lines, sink } = logSink()
  const gw = await buildGateway({
    // a breaker that never opens: every request reaches the dead upstream
    config: parseGatewayConfig({ breaker: { failureThreshold: 1000, resetTimeout: '60s' }, routes: [{ prefix: '/d', upstream: `http://127.0.0.1:${dead}`, auth: false }] }, 'test'),
    logger: gatewayLogger('info', sink)
  })
  t.teardown(() => gw.close())
  await gw.app.listen({ port: 0, host: '127.0.0.1' })
  const base = `http://127.0.0.1:${(gw.app.server.address() as AddressInfo).port}`
  const statuses: number[] = []
  for (let i = 0; i < 40; i++) statuses.push((await rawRequest(base, '/d/x', { method: 'POST' })).status)
  t.ok(statuses.every((s) => s === 502), 'every request: 502')
  await gw.app.close()
  const warnings = lines.filter((l) => (l.level as number) >= 40)
  t.same(lines.filter((l) => l.msg === 'response errored').length, 0, 'no per-request "response errored" line')
  t.ok(warnings.length <= 3, `${warnings.length} warn-or-above lines for 40 failed requests`)
  t.ok(warnings.every((l) => !('err' in l) && !('stack' in l)), 'none with an error object or stack')
})

t.test('expected refusals log one short line per code and second, without a stack (an outage wrote ~1.1 KB with a stack per request)', async (t) => {
  const up = await upstream(t)
  up.handle((_req, res) => { res.socket?.destroy() })
  const { lines, sink } = logSink()
  const gw = await buildGateway({
    config: parseGatewayConfig({ breaker: { failureThreshold: 2, resetTimeout: '60s' }, routes: [{ prefix: '/b', upstream: up.url, auth: false }] }, 'test'),
    logger: gatewayLogger('info', sink)
  })
  t.teardown(() => gw.close())
  await gw.app.listen({ port: 0, host: '127.0.0.1' })
  const base = `http://127.0.0.1:${(gw.app.server.address() as AddressInfo).port}`
  const statuses: number[] = []
  for (let i = 0; i < 50; i++) statuses.push((await rawRequest(base, '/b/x', { method: 'POST' })).status)
  t.same(statuses.slice(0, 2), [502, 502])
  t.ok(statuses.slice(2).every((s) => s === 503), 'then the breaker answers')
  await gw.app.close() // flushes the log destination
  const refusals = lines.filter((l) => l.msg === 'request refused' || l.msg === 'request failed')
  t.ok(refusals.length <= 4, `${refusals.length} refusal lines for 50 refused requests (at most one per code and second)`)
  t.ok(refusals.some((l) => l.code === 'PORTCULLIS_CIRCUIT_OPEN'), 'the breaker refusals are logged')
  t.ok(refusals.some((l) => l.code === 'PORTCULLIS_UPSTREAM_UNAVAILABLE' && l.cause !== undefined), 'the upstream failure names its cause')
  for (const l of refusals) {
    t.equal(l.level, 40, `${String(l.code)} at warn`)
    t.notOk('err' in l || 'stack' in l, 'no error object or stack')
    t.ok(JSON.stringify(l).length < 400, 'a short line')
  }
})
