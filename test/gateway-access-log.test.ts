import t from 'tap'
import pino from 'pino'
import { buildGateway, gatewayLogger } from '../gateway/server.js'
import { accessLogger } from '../gateway/access-log.js'
import { parseGatewayConfig } from '../gateway/config.js'
import { echoUpstream } from './helpers/upstream.js'
import { startTestIssuer } from './helpers/issuer.js'
import { logSink } from './helpers/log-sink.js'


// The access line is assembled by the gateway itself (gateway/access-log.ts); it must be the line pino
// would write for the same fields, whatever the URL or the sub holds.
t.test('the access line is the JSON pino writes for the same fields, with awkward URLs and subs', async (t) => {
  const issuer = await startTestIssuer()
  const up = await echoUpstream()
  const { lines, sink: stream } = logSink()
  const config = parseGatewayConfig({
    issuers: [{ issuer: issuer.url, audience: 'portcullis' }],
    routes: [{ prefix: '/a', upstream: up.url }, { prefix: '/open', upstream: up.url, auth: false }]
  }, 'test')
  const logger = gatewayLogger('info', stream)
  const gw = await buildGateway({ config, logger })
  t.teardown(async () => { await gw.close(); await up.close(); await issuer.close() })
  await gw.app.ready()
  await gw.app.jwksAuth.refresh()

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
    const headers: Record<string, string> = { 'x-request-id': 'rid-1' }
    if (c.sub !== undefined) headers.authorization = `Bearer ${issuer.sign({ sub: c.sub })}`
    const r = await gw.app.inject({ url: c.url, method: c.method ?? 'GET', headers })
    const access = lines.filter((l) => l.msg === 'request completed')
    t.equal(access.length, 1, `${c.url}: one access line`)
    const got = access[0]!
    // what pino itself writes for these fields through a request logger
    const expected: string[] = []
    const reference = pino({ name: 'gateway' }, { write: (s: string) => { expected.push(s) } })
    reference.child({ reqId: 'rid-1' }).info({
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
  const request = { id: 'rid-3', method: 'GET', url: '/x', routeOptions: { url: undefined }, user: null, ip: undefined }
  write(request as never, { statusCode: 499, elapsedTime: 1.5 } as never)
  t.equal(lines.length, 1)
  const rec = lines[0]!
  t.match(rec, { reqId: 'rid-3', url: '/x', statusCode: 499, responseTime: 1.5, msg: 'request completed' })
  t.notOk('ip' in rec || 'sub' in rec || 'route' in rec, 'no ip, sub or route member')
})
