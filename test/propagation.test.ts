import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import Fastify, { type FastifyInstance } from 'fastify'
import t, { type Test } from 'tap'
import { request } from 'undici'
import propagation, { createServiceClient, currentContext, runInBackground, type ServiceTokenSource } from '@portcullis/propagation'

type Handler = (req: IncomingMessage, res: ServerResponse) => void

/** A raw upstream on port 0; returns its URL and closes (with its sockets) at teardown. */
async function upstream (t: Test, handler: Handler): Promise<string> {
  const srv: Server = createServer(handler)
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => { srv.closeAllConnections(); srv.close(() => resolve()) }))
  return `http://127.0.0.1:${(srv.address() as AddressInfo).port}`
}

/** Echoes the identity headers it received, after `delayOf(req)` ms. */
function echo (delayOf: (req: IncomingMessage) => number = () => 0): Handler {
  return (req, res) => {
    setTimeout(() => {
      res.setHeader('content-type', 'application/json')
      res.end(JSON.stringify({ authorization: req.headers.authorization ?? null, requestId: req.headers['x-request-id'] ?? null }))
    }, delayOf(req))
  }
}

async function listen (t: Test, app: FastifyInstance): Promise<string> {
  t.teardown(() => app.close())
  return await app.listen({ port: 0, host: '127.0.0.1' })
}

interface Seen { authorization: string | null, requestId: string | null }

t.test('concurrent requests never see each other\'s token, even when their calls interleave', async (t) => {
  // The upstream answers later calls first, and each request waits on a gate released in reverse order.
  const up = await upstream(t, echo((req) => 5 * (40 - Number(req.headers['x-n'] ?? 0) % 40)))
  const app = Fastify()
  await app.register(propagation)
  const client = app.serviceClient(up)
  const gates: Array<() => void> = []
  let arrived = 0
  const N = 40
  let allArrived!: () => void
  const everyoneWaiting = new Promise<void>((resolve) => { allArrived = resolve })
  app.get('/call', async (req) => {
    const n = String(req.headers['x-n'])
    const first = await client.request<Seen>({ path: '/a', headers: { 'x-n': n } })
    await new Promise<void>((resolve) => {
      gates.push(resolve)
      if (++arrived === N) allArrived()
    })
    const second = await client.request<Seen>({ path: '/b', headers: { 'x-n': n } })
    const third = await new Promise<Seen>((resolve, reject) => {
      setImmediate(() => { client.get<Seen>('/c').then((r) => resolve(r.body), reject) })
    })
    return { first: first.body, second: second.body, third, ctx: currentContext() }
  })
  const base = await listen(t, app)

  const calls = Array.from({ length: N }, (_, i) => request(`${base}/call`, {
    headers: { authorization: `Bearer token-${i}`, 'x-request-id': `req-${i}`, 'x-n': String(i) }
  }).then(async (r) => ({ status: r.statusCode, body: await r.body.json() as Record<string, Seen> })))
  await everyoneWaiting
  for (const release of gates.reverse()) release()
  const results = await Promise.all(calls)

  let mismatches = 0
  results.forEach((r, i) => {
    t.equal(r.status, 200)
    for (const k of ['first', 'second', 'third', 'ctx']) {
      const seen = r.body[k]!
      if (seen.authorization !== `Bearer token-${i}` || seen.requestId !== `req-${i}`) mismatches++
    }
  })
  t.equal(mismatches, 0, `all ${N * 4} observations carry their own request's token and id`)
  t.equal(currentContext(), undefined, 'nothing leaks into the test\'s own scope')
})

t.test('a request without Authorization sends none, and gets a request id of its own', async (t) => {
  const up = await upstream(t, echo())
  const app = Fastify({ genReqId: () => 'generated-1' })
  await app.register(propagation)
  const client = app.serviceClient(up)
  app.get('/call', async () => (await client.get<Seen>('/x')).body)
  const res = await app.inject({ url: '/call', headers: { 'x-request-id': 'bad id with spaces' } })
  t.same(res.json(), { authorization: null, requestId: 'generated-1' }, 'an unsafe incoming id is replaced')
  t.equal(res.headers['x-request-id'], 'generated-1', 'the id is echoed to the caller')
})

function fakeTokens (): ServiceTokenSource & { issued: number, invalidated: string[] } {
  const src = {
    issued: 0,
    invalidated: [] as string[],
    token: async () => `svc-${src.issued === 0 ? ++src.issued : src.issued}`,
    invalidate: (tok: string) => { src.invalidated.push(tok); src.issued++ }
  }
  return src
}

t.test('background calls use the service token; request calls never do', async (t) => {
  const up = await upstream(t, echo())
  const tokens = fakeTokens()
  const app = Fastify()
  await app.register(propagation, { serviceToken: tokens })
  const client = app.serviceClient(up)
  let backgroundSeen: Promise<Seen> | undefined
  app.get('/call', async () => {
    // Work the request starts but that must act as the service, not the caller.
    backgroundSeen = runInBackground(() => client.get<Seen>('/bg').then((r) => r.body))
    return (await client.get<Seen>('/fg')).body
  })
  await app.ready()
  t.teardown(() => app.close())

  const outside = await client.get<Seen>('/job')
  t.equal(outside.body.authorization, 'Bearer svc-1', 'a call outside any request carries the service token')
  t.equal(outside.body.requestId, null)

  const res = await app.inject({ url: '/call', headers: { authorization: 'Bearer user-token', 'x-request-id': 'r1' } })
  t.same(res.json(), { authorization: 'Bearer user-token', requestId: 'r1' }, 'in a request: the caller\'s token')
  t.same(await backgroundSeen, { authorization: 'Bearer svc-1', requestId: null }, 'runInBackground: the service token')
})

t.test('a background call with its own Authorization header (any casing) sends only that one', async (t) => {
  let seen: string[] = []
  const up = await upstream(t, (req, res) => {
    // rawHeaders: Node keeps only the first of duplicated Authorization headers in req.headers.
    seen = req.rawHeaders.flatMap((v, i) => i % 2 === 1 && req.rawHeaders[i - 1]!.toLowerCase() === 'authorization' ? [v] : [])
    res.end()
  })
  const tokens = fakeTokens()
  const client = createServiceClient(up, { serviceToken: tokens })
  t.teardown(() => client.close())
  const res = await client.request({ path: '/job', headers: { Authorization: 'Bearer explicit' } })
  t.equal(res.status, 200)
  t.same(seen, ['Bearer explicit'], 'one Authorization header, the caller\'s own; no service token added')
})

t.test('a background call refused with 401 renews the service token and retries once', async (t) => {
  let calls = 0
  const up = await upstream(t, (req, res) => {
    calls++
    res.statusCode = req.headers.authorization === 'Bearer svc-1' ? 401 : 200
    res.end()
  })
  const tokens = fakeTokens()
  const client = createServiceClient(up, { serviceToken: tokens })
  t.teardown(() => client.close())
  const res = await client.get('/job')
  t.equal(res.status, 200)
  t.same(tokens.invalidated, ['svc-1'])
  t.equal(calls, 2)
})

t.test('upstream faults map to 502 and timeouts to 504, with no library message', async (t) => {
  const hang = await upstream(t, () => { /* never answers */ })
  const slowBody = await upstream(t, (_req, res) => { res.writeHead(200, { 'content-type': 'application/json' }); res.write('{') })
  const broken = await upstream(t, (_req, res) => { res.statusCode = 500; res.end('database exploded at line 42') })
  const notFound = await upstream(t, (_req, res) => { res.statusCode = 404; res.setHeader('content-type', 'application/json'); res.end('{"error":"nope"}') })
  const app = Fastify()
  await app.register(propagation, { timeout: 150 })
  const clients = {
    hang: app.serviceClient(hang),
    slowBody: app.serviceClient(slowBody),
    broken: app.serviceClient(broken),
    notFound: app.serviceClient(notFound)
  }
  app.get('/:which', async (req) => {
    const which = (req.params as { which: keyof typeof clients | 'refused' }).which
    if (which === 'refused') return (await closedClient.get('/')).body
    const r = await clients[which].get('/')
    return { status: r.status, body: r.body }
  })
  // Port 1 on loopback: nothing listens there, so the connection is refused.
  const closedClient = app.serviceClient('http://127.0.0.1:1')
  await app.ready()
  t.teardown(() => app.close())

  for (const [which, status, code] of [
    ['hang', 504, 'PORTCULLIS_UPSTREAM_TIMEOUT'],
    ['slowBody', 504, 'PORTCULLIS_UPSTREAM_TIMEOUT'],
    ['broken', 502, 'PORTCULLIS_UPSTREAM_FAILED'],
    ['refused', 502, 'PORTCULLIS_UPSTREAM_UNAVAILABLE']
  ] as const) {
    const res = await app.inject({ url: `/${which}` })
    t.equal(res.statusCode, status, `${which} -> ${status}`)
    t.equal(res.json().code, code)
    t.notMatch(res.body, /UND_ERR|exploded|ECONNREFUSED|timeout error|at .*\.js/i, `${which}: no library text or stack`)
  }
  const nf = await app.inject({ url: '/notFound' })
  t.same(nf.json(), { status: 404, body: { error: 'nope' } }, '4xx answers are returned for the handler to decide')
})

t.test('the default timeout is 5 s', async (t) => {
  const { DEFAULT_TIMEOUT_MS } = await import('@portcullis/propagation')
  t.equal(DEFAULT_TIMEOUT_MS, 5000)
})
