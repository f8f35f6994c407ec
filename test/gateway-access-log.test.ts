import t, { type Test } from 'tap'
import pino, { type Logger } from 'pino'
import { spawnSync } from 'node:child_process'
import { request as httpRequest } from 'node:http'
import type { AddressInfo } from 'node:net'
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { BatchedDestination } from '../lib/log-destination.js'
import { buildGateway, gatewayLogger, type Gateway } from '../gateway/server.js'
import { accessLogger } from '../gateway/access-log.js'
import { parseGatewayConfig } from '../gateway/config.js'
import { echoUpstream } from './helpers/upstream.js'
import { startTestIssuer, type TestIssuer } from './helpers/issuer.js'
import { logSink } from './helpers/log-sink.js'


/** A gateway with one protected (`/a`) and one open (`/open`) route, a real issuer and upstream, logging to `logger`. */
async function accessGateway (t: Test, logger: Logger): Promise<{ gw: Gateway, issuer: TestIssuer }> {
  const issuer = await startTestIssuer()
  const up = await echoUpstream()
  const config = parseGatewayConfig({
    issuers: [{ issuer: issuer.url, audience: 'portcullis' }],
    routes: [{ prefix: '/a', upstream: up.url }, { prefix: '/open', upstream: up.url, auth: false }]
  }, 'test')
  const gw = await buildGateway({ config, logger })
  t.teardown(async () => { await gw.close(); await up.close(); await issuer.close() })
  await gw.app.ready()
  await gw.app.jwksAuth.refresh()
  return { gw, issuer }
}

// The access line is assembled by the gateway itself (gateway/access-log.ts); it must be the line pino
// would write for the same fields, whatever the URL or the sub holds.
t.test('the access line is the JSON pino writes for the same fields, with awkward URLs and subs', async (t) => {
  const { lines, sink: stream } = logSink()
  const logger = gatewayLogger('info', stream)
  const { gw, issuer } = await accessGateway(t, logger)

  const cases = [
    { url: '/a/x?q=%22quoted%22&u=%E2%80%A8', sub: 'plain-user' },
    { url: '/a/p', sub: 'plain-user', method: 'DELETE' }, // same caller, another method: members rendered once per value stay right
    { url: '/a/y', sub: 'quote"back\\slash\u2028line\u0001ctl' },
    { url: '/a/z', sub: 'ünïcödé 🚪' },
    { url: '/open/anon', sub: undefined },
    { url: '/nowhere', sub: undefined } // no route: refused (401, every path needs a token by default), no route pattern
  ]
  let last: Record<string, unknown> = {}
  for (const c of cases) {
    lines.length = 0
    // a caller's trace context: the line carries its trace id and the gateway's own span id
    const traceId = 'a3ce929d0e0e47364bf92f3577b34da6'
    const headers: Record<string, string> = { 'x-request-id': 'rid-1', traceparent: `00-${traceId}-00f067aa0ba902b7-01` }
    if (c.sub !== undefined) headers.authorization = `Bearer ${issuer.sign({ sub: c.sub })}`
    const r = await gw.app.inject({ url: c.url, method: c.method ?? 'GET', headers })
    const access = lines.filter((l) => l.msg === 'request completed')
    t.equal(access.length, 1, `${c.url}: one access line`)
    const got = access[0]!
    t.equal(got.trace_id, traceId, `${c.url}: the caller's trace id`)
    t.match(got.span_id, /^[0-9a-f]{16}$/, `${c.url}: the gateway's span id`)
    t.not(got.span_id, '00f067aa0ba902b7', `${c.url}: not the caller's span id`)
    // what pino itself writes for these fields through a request logger (Fastify's reqId and the tracing plugin's fields)
    const expected: string[] = []
    const reference = pino({ name: 'gateway' }, { write: (s: string) => { expected.push(s) } })
    reference.child({ reqId: 'rid-1', trace_id: traceId, span_id: got.span_id }).info({
      method: c.method ?? 'GET',
      url: c.url,
      route: got.route === undefined ? undefined : (c.url.startsWith('/open') ? '/open/*' : '/a/*'),
      statusCode: r.statusCode,
      responseTime: got.responseTime,
      sub: c.sub,
      ip: '127.0.0.1'
    }, 'request completed')
    const want = JSON.parse(expected[0]!) as Record<string, unknown>
    t.same({ ...got, time: 0, pid: 0 }, { ...want, time: 0, pid: 0 }, `${c.url}: same fields and values as pino's line`)
    t.same(Object.keys(got), Object.keys(want), `${c.url}: same key order`)
    t.equal(typeof got.time, 'number')
    t.equal(got.pid, process.pid)
    last = got
  }
  t.equal(last.url, '/nowhere')
  t.notOk('route' in last, 'a path without a route has no route pattern in its line')

  // a level above info writes no access line
  logger.level = 'warn'
  lines.length = 0
  await gw.app.inject({ url: '/open/anon' })
  t.equal(lines.length, 0, 'no access line at level warn')
})

t.test('a logger not made by gatewayLogger gets the access line through request.log', async (t) => {
  const up = await echoUpstream()
  const { lines, sink: stream } = logSink()
  const gw = await buildGateway({ config: parseGatewayConfig({ routes: [{ prefix: '/open', upstream: up.url, auth: false }] }, 'test'), logger: pino({ name: 'custom' }, stream) })
  t.teardown(async () => { await gw.close(); await up.close() })
  await gw.app.inject({ url: '/open/x', headers: { 'x-request-id': 'rid-2' } })
  const access = lines.filter((l) => l.msg === 'request completed')
  t.equal(access.length, 1)
  t.match(access[0], { name: 'custom', reqId: 'rid-2', url: '/open/x', route: '/open/*', statusCode: 200 })
})

t.test('fields that are undefined are left out, as pino does (a client gone before the line: no ip)', async (t) => {
  const { lines, sink: stream } = logSink()
  const logger = gatewayLogger('info', stream)
  const write = accessLogger(logger)
  const request = { id: 'rid-3', raw: {}, method: 'GET', url: '/x', routeOptions: { url: undefined }, user: null, ip: undefined }
  write(request as never, { statusCode: 499, elapsedTime: 1.5 } as never)
  t.equal(lines.length, 1)
  const rec = lines[0]!
  t.match(rec, { reqId: 'rid-3', url: '/x', statusCode: 499, responseTime: 1.5, msg: 'request completed' })
  t.notOk('ip' in rec || 'sub' in rec || 'route' in rec, 'no ip, sub or route member')
  t.notOk('trace_id' in rec || 'span_id' in rec, 'no trace members for a request without a trace context')
})

t.test('with the batched destination, access lines are held as fields and come out in order, rendered the same', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-access-'))
  const file = join(dir, 'out.log')
  const fd = openSync(file, 'w')
  // small batches, no timer: the file shows what was rendered and written without a flush
  const dest = new BatchedDestination({ fd, flushInterval: 60_000, batch: 4096 })
  t.teardown(() => { dest.close(); closeSync(fd); rmSync(dir, { recursive: true, force: true }) })
  const logger = gatewayLogger('info', dest)
  const { gw, issuer } = await accessGateway(t, logger)
  const read = (): Array<Record<string, unknown>> => readFileSync(file, 'utf8').split('\n').filter((l) => l !== '').map((l) => JSON.parse(l) as Record<string, unknown>)

  const subs = ['plain-user', 'plain-user', 'quote"d\u2028', undefined]
  for (const [i, sub] of subs.entries()) {
    const headers: Record<string, string> = { 'x-request-id': `held-${i}` }
    if (sub !== undefined) headers.authorization = `Bearer ${issuer.sign({ sub })}`
    await gw.app.inject({ url: sub === undefined ? '/open/x' : `/a/${i}`, method: i === 1 ? 'POST' : 'GET', headers })
  }
  t.same(read(), [], 'nothing written yet: four records held')
  logger.info({ event: 'marker' }, 'another line')
  dest.flush()
  const lines = read()
  t.same(lines.map((l) => l.reqId ?? l.event), ['held-0', 'held-1', 'held-2', 'held-3', 'marker'], 'held lines first, in order, then the line that drained them')
  for (const [i, sub] of subs.entries()) {
    const got = lines[i]!
    t.match(got, { level: 30, name: 'gateway', method: i === 1 ? 'POST' : 'GET', statusCode: 200, msg: 'request completed' })
    t.equal(got.sub, sub, `line ${i}: sub`)
    t.equal(got.route, sub === undefined ? '/open/*' : '/a/*')
    t.equal(got.ip, '127.0.0.1')
    t.match(got.trace_id, /^[0-9a-f]{32}$/, `line ${i}: a trace id (started by the gateway)`)
    t.same(Object.keys(got), ['level', 'time', 'pid', 'hostname', 'name', 'reqId', 'trace_id', 'span_id', 'method', 'url', 'route', 'statusCode', 'responseTime', ...(sub === undefined ? [] : ['sub']), 'ip', 'msg'])
  }

  // 64 held records are rendered at once, without any other line or flush: 63 stay held, the 64th
  // renders all of them (~16 KB, so most reach the file through 4 KiB batches)
  const many = (): number => read().filter((l) => String(l.reqId).startsWith('many-')).length
  for (let i = 0; i < 63; i++) await gw.app.inject({ url: '/open/many', headers: { 'x-request-id': `many-${i}` } })
  t.equal(many(), 0, '63 records: still held')
  await gw.app.inject({ url: '/open/many', headers: { 'x-request-id': 'many-63' } })
  t.ok(many() >= 40, `the 64th record renders the batch: ${many()} lines written before any flush`)
  dest.flush()
  t.equal(many(), 64)
})

t.test('held access lines are written when the process exits', async (t) => {
  const mod = (name: string): string => JSON.stringify(fileURLToPath(new URL(`../gateway/${name}.ts`, import.meta.url)))
  const script = `import { gatewayLogger } from ${mod('server')}
import { accessLogger } from ${mod('access-log')}
const write = accessLogger(gatewayLogger('info'))
write({ id: 'last-words', raw: {}, method: 'GET', url: '/x', routeOptions: { url: '/x' }, user: null, ip: '10.0.0.1' }, { statusCode: 204, elapsedTime: 0.5 })
process.exit(0)`
  const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { encoding: 'utf8' })
  t.equal(r.status, 0, r.stderr)
  t.match(JSON.parse(r.stdout) as Record<string, unknown>, { reqId: 'last-words', statusCode: 204, ip: '10.0.0.1', msg: 'request completed' })
})

t.test('the access line keeps the client ip when the client closed its connection first (POSTs were logged without one)', async (t) => {
  const { lines, sink: stream } = logSink()
  const { gw, issuer } = await accessGateway(t, gatewayLogger('info', stream))
  await gw.app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = gw.app.server.address() as AddressInfo
  const token = issuer.sign({ sub: 'poster' })
  for (const [method, path] of [['POST', '/open/x'], ['POST', '/a/x'], ['GET', '/a/x']] as const) {
    lines.length = 0
    const body = method === 'POST' ? '{"n":1}' : ''
    // one request per connection (Connection: close), as `curl -d` sends it: the client's socket is
    // gone by the time the gateway writes the access line
    await new Promise<void>((resolve, reject) => {
      const req = httpRequest({ port, host: '127.0.0.1', method, path, agent: false, headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', 'content-length': String(body.length), connection: 'close' } }, (res) => {
        res.resume()
        res.on('end', () => { req.destroy(); resolve() })
      })
      req.on('error', reject)
      req.end(body)
    })
    for (let i = 0; i < 100 && !lines.some((l) => l.msg === 'request completed'); i++) await new Promise((resolve) => setTimeout(resolve, 10))
    const access = lines.find((l) => l.msg === 'request completed')
    t.equal(access?.ip, '127.0.0.1', `${method} ${path}: ip in the access line`)
  }
})
