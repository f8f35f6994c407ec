import { createServer, type IncomingHttpHeaders, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import Fastify, { type FastifyInstance, type FastifyRequest } from 'fastify'
import t, { type Test } from 'tap'
import tracing, { TracingConfigError, createOtlpProvider, parseTraceparent, tracingOptionsFromEnv, type SamplerName, type TracingPluginOptions } from '@portcullis/tracing'
import propagation from '@portcullis/propagation'
import { startOtlpReceiver, type OtlpReceiver, type ReceivedSpan } from './helpers/otlp-receiver.js'

// @portcullis/tracing on plain Fastify apps: the request's trace context (accepted or started), the
// trace fields in its log lines, the server span exported over OTLP/HTTP, sampling, option checks,
// the options read from the OpenTelemetry variables, and the trace context calls carry upstream.

const TRACE = '4bf92f3577b34da6a3ce929d0e0e4736'
const PARENT = '00f067aa0ba902b7'
const SAMPLED = `00-${TRACE}-${PARENT}-01`
const NOT_SAMPLED = `00-${TRACE}-${PARENT}-00`
const TRACESTATE = 'rojo=00f067aa0ba902b7,congo=t61rcWkgMzE'
const HEX32 = /^[0-9a-f]{32}$/
const HEX16 = /^[0-9a-f]{16}$/
const SERVER = 2
const CLIENT = 3
const INTERNAL = 1
const ERROR = 2

/** Malformed `traceparent` values: each must start a new trace. */
const MALFORMED: Array<[string, string]> = [
  ['upper-case hex', `00-${TRACE.toUpperCase()}-${PARENT}-01`],
  ['an all-zero trace id', `00-${'0'.repeat(32)}-${PARENT}-01`],
  ['an all-zero parent id', `00-${TRACE}-${'0'.repeat(16)}-01`],
  ['version ff', `ff-${TRACE}-${PARENT}-01`],
  ['version 00 with more fields', `${SAMPLED}-x`],
  ['a truncated header', SAMPLED.slice(0, 50)]
]

interface Ctx { traceId: string, spanId: string, flags: number, tracestate: string | null, reqId: string }

/** What a route answers: the request's trace context, field by field, and its request id. */
function ctxOf (req: FastifyRequest): Ctx {
  const c = req.traceContext
  return { traceId: c.traceId, spanId: c.spanId, flags: c.flags, tracestate: c.tracestate ?? null, reqId: req.id }
}

interface LogLine { reqId?: string, msg?: string, trace_id?: string, span_id?: string, raw: string, [k: string]: unknown }

/** A pino destination keeping every line written, parsed (and as written, in `raw`). */
function captureLogs (): { stream: { write: (line: string) => void }, lines: LogLine[] } {
  const lines: LogLine[] = []
  return { lines, stream: { write: (line: string) => { lines.push({ ...JSON.parse(line) as object, raw: line }) } } }
}

const occurrences = (text: string, what: string): number => text.split(what).length - 1

function app (t: Test, logStream?: { write: (line: string) => void }): FastifyInstance {
  const a = logStream === undefined ? Fastify() : Fastify({ logger: { level: 'info', stream: logStream } })
  t.teardown(() => a.close())
  return a
}

async function receiver (t: Test): Promise<OtlpReceiver> {
  const r = await startOtlpReceiver()
  t.teardown(() => r.close())
  return r
}

function exportTo (r: OtlpReceiver, more: TracingPluginOptions = {}): TracingPluginOptions {
  return { exportUrl: `${r.url}/v1/traces`, scheduledDelayMillis: 50, ...more }
}

const inTrace = (spans: ReceivedSpan[], traceId: string): ReceivedSpan[] => spans.filter((s) => s.traceId === traceId)

/** A plain HTTP server on 127.0.0.1:0 keeping the path, headers and body of every request it gets. */
async function recordingServer (t: Test): Promise<{ url: string, seen: Array<{ path: string, headers: IncomingHttpHeaders, body: string }> }> {
  const seen: Array<{ path: string, headers: IncomingHttpHeaders, body: string }> = []
  const srv: Server = createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      seen.push({ path: req.url ?? '', headers: req.headers, body: Buffer.concat(chunks).toString('utf8') })
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}')
    })
  })
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => { srv.closeAllConnections(); srv.close(() => resolve()) }))
  return { url: `http://127.0.0.1:${(srv.address() as AddressInfo).port}`, seen }
}

/** Sets process environment variables for the rest of the test, restored at teardown. */
function setEnv (t: Test, vars: Record<string, string>): void {
  const saved = Object.fromEntries(Object.keys(vars).map((k) => [k, process.env[k]]))
  Object.assign(process.env, vars)
  t.teardown(() => {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k]
      else process.env[k] = v
    }
  })
}

// ---------------------------------------------------------------------------------------------
// 1. The trace context and the log lines, without an export URL

t.test('without exportUrl: the caller\'s trace is continued, or a new one started', async (t) => {
  const a = app(t)
  await a.register(tracing)
  a.get('/ctx', async (req) => ctxOf(req))
  t.equal(a.tracing.recording, false, 'nothing is recorded without an export URL')

  const cont = (await a.inject({ url: '/ctx', headers: { traceparent: SAMPLED, tracestate: TRACESTATE } })).json<Ctx>()
  t.equal(cont.traceId, TRACE, 'the caller\'s trace id is kept')
  t.match(cont.spanId, HEX16, 'a span id of 16 hex digits')
  t.not(cont.spanId, PARENT, 'the span id is new, not the caller\'s')
  t.equal(cont.flags, 1, 'the caller\'s flags (sampled)')
  t.equal(cont.tracestate, TRACESTATE, 'the caller\'s tracestate')

  const again = (await a.inject({ url: '/ctx', headers: { traceparent: SAMPLED } })).json<Ctx>()
  t.not(again.spanId, cont.spanId, 'each request gets a span id of its own')
  t.equal(again.tracestate, null, 'no tracestate when the caller sent none')

  const unsampled = (await a.inject({ url: '/ctx', headers: { traceparent: NOT_SAMPLED, tracestate: TRACESTATE } })).json<Ctx>()
  t.equal(unsampled.traceId, TRACE, 'an unsampled trace is continued too')
  t.equal(unsampled.flags, 0, 'with the caller\'s flags (not sampled)')

  const fresh = (await a.inject({ url: '/ctx' })).json<Ctx>()
  const fresh2 = (await a.inject({ url: '/ctx', headers: { tracestate: TRACESTATE } })).json<Ctx>()
  t.match(fresh.traceId, HEX32, 'no traceparent: a new trace id of 32 hex digits')
  t.not(fresh.traceId, TRACE)
  t.not(fresh.traceId, fresh2.traceId, 'each request without a traceparent starts its own trace')
  t.match(fresh.spanId, HEX16, 'and a span id of 16 hex digits')
  t.equal(fresh.flags, 0, 'flags 0 for a new trace without recording')
  t.equal(fresh2.tracestate, null, 'a tracestate without a traceparent is dropped')

  for (const [what, header] of MALFORMED) {
    const m = (await a.inject({ url: '/ctx', headers: { traceparent: header, tracestate: TRACESTATE } })).json<Ctx>()
    t.ok(HEX32.test(m.traceId) && m.traceId !== TRACE && !/^0+$/.test(m.traceId), `${what}: a new trace (${m.traceId})`)
    t.equal(m.flags, 0, `${what}: flags 0`)
    t.equal(m.tracestate, null, `${what}: the tracestate is dropped`)
  }
})

t.test('every log line of a request carries its trace_id and span_id', async (t) => {
  const logs = captureLogs()
  const a = app(t, logs.stream)
  a.get('/early', async (req) => { req.log.info('early route line'); return ctxOf(req) })
  await a.register(tracing)
  a.get('/items/:id', async (req) => { req.log.info({ id: (req.params as { id: string }).id }, 'handler line'); return ctxOf(req) })
  a.get('/fail', async (req) => { req.log.info('about to fail'); throw new Error('boom') })
  a.setErrorHandler(async (err, req, reply) => {
    req.log.warn({ problem: (err as Error).message }, 'error handler line')
    return reply.code(500).send(ctxOf(req))
  })
  // a not-found handler set after the plugin
  a.setNotFoundHandler(async (req, reply) => {
    req.log.info('not-found handler line')
    return reply.code(404).send(ctxOf(req))
  })

  const linesOf = (reqId: string): LogLine[] => logs.lines.filter((l) => l.reqId === reqId)
  const allCarry = (t: Test, what: string, c: Ctx, mustHave: string[]): void => {
    const lines = linesOf(c.reqId)
    for (const msg of mustHave) t.ok(lines.some((l) => l.msg === msg), `${what}: the line "${msg}" was written`)
    const wrong = lines.filter((l) => l.trace_id !== c.traceId || l.span_id !== c.spanId)
    t.same(wrong.map((l) => l.msg), [], `${what}: all ${lines.length} lines carry trace_id ${c.traceId} and span_id ${c.spanId}`)
    const repeated = lines.filter((l) => occurrences(l.raw, '"trace_id":') !== 1 || occurrences(l.raw, '"span_id":') !== 1)
    t.same(repeated.map((l) => l.msg), [], `${what}: each line has the fields once`)
  }

  const routed = await a.inject({ url: '/items/42', headers: { traceparent: SAMPLED } })
  const rc = routed.json<Ctx>()
  t.equal(rc.traceId, TRACE)
  allCarry(t, 'a route added after the plugin', rc, ['incoming request', 'handler line', 'request completed'])

  const started = (await a.inject({ url: '/items/43' })).json<Ctx>()
  t.not(started.traceId, TRACE)
  allCarry(t, 'a request that started its trace', started, ['incoming request', 'handler line', 'request completed'])

  const failed = await a.inject({ url: '/fail', headers: { traceparent: SAMPLED } })
  t.equal(failed.statusCode, 500)
  const fc = failed.json<Ctx>()
  t.equal(fc.traceId, TRACE)
  allCarry(t, 'a request ending in the error handler', fc, ['incoming request', 'about to fail', 'error handler line', 'request completed'])

  const missing = await a.inject({ url: '/nowhere', headers: { traceparent: SAMPLED } })
  t.equal(missing.statusCode, 404)
  const mc = missing.json<Ctx>()
  t.equal(mc.traceId, TRACE)
  allCarry(t, 'the not-found handler', mc, ['incoming request', 'not-found handler line', 'request completed'])

  // A route added before the plugin: the lines its handler writes through request.log carry the fields.
  const early = (await a.inject({ url: '/early', headers: { traceparent: SAMPLED } })).json<Ctx>()
  const line = linesOf(early.reqId).find((l) => l.msg === 'early route line')
  t.equal(line?.trace_id, early.traceId, 'a route added before the plugin: its handler\'s line has the trace_id')
  t.equal(line?.span_id, early.spanId, 'and the span_id')

  t.ok(new Set([rc.spanId, fc.spanId, mc.spanId, early.spanId]).size === 4, 'each request logged its own span id')
})

t.test('the default not-found handler: its line written through request.log carries the trace fields', async (t) => {
  const logs = captureLogs()
  const a = app(t, logs.stream)
  await a.register(tracing)
  a.get('/exists', async () => 'ok')
  const res = await a.inject({ url: '/nope', headers: { traceparent: SAMPLED } })
  t.equal(res.statusCode, 404)
  const line = logs.lines.find((l) => l.msg === 'Route GET:/nope not found')
  t.ok(line !== undefined, 'Fastify\'s not-found line was written through request.log')
  t.equal(line?.trace_id, TRACE, 'with the caller\'s trace id')
  t.match(String(line?.span_id), HEX16, 'and a span id')
  t.not(line?.span_id, PARENT, 'the request\'s span, not the caller\'s')
})

t.test('custom log field names', async (t) => {
  const logs = captureLogs()
  const a = app(t, logs.stream)
  await a.register(tracing, { traceIdLogField: 'trace.id', spanIdLogField: 'span.id' })
  a.get('/', async (req) => { req.log.info('line'); return ctxOf(req) })
  const c = (await a.inject({ url: '/', headers: { traceparent: SAMPLED } })).json<Ctx>()
  const line = logs.lines.find((l) => l.msg === 'line')
  t.equal(line?.['trace.id'], c.traceId, 'the trace id under the configured name')
  t.equal(line?.['span.id'], c.spanId, 'the span id under the configured name')
  t.equal(line?.trace_id, undefined, 'not under the default name')
})

t.test('without exportUrl nothing is sent, even with the OpenTelemetry variables set', async (t) => {
  const r = await receiver(t)
  // the variables the OpenTelemetry exporter itself would read if the plugin made one without a URL
  setEnv(t, {
    OTEL_EXPORTER_OTLP_ENDPOINT: r.url,
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: `${r.url}/v1/traces`,
    OTEL_BSP_SCHEDULE_DELAY: '10'
  })
  const a = Fastify()
  t.teardown(() => a.close())
  await a.register(tracing)
  a.get('/items/:id', async (req) => {
    const child = a.tracing.startChild(req, 'call', 'client')
    child.end(200)
    return { ...ctxOf(req), child: child.traceparent }
  })
  a.get('/fail', async () => { throw new Error('boom') })
  let c: (Ctx & { child: string }) | undefined
  for (let i = 0; i < 5; i++) {
    c = (await a.inject({ url: `/items/${i}`, headers: { traceparent: SAMPLED } })).json<Ctx & { child: string }>()
    await a.inject({ url: '/fail' })
    await a.inject({ url: '/nowhere' })
  }
  t.equal(c?.child, `00-${c?.traceId}-${c?.spanId}-01`, 'without recording, startChild gives the request\'s own traceparent')
  await a.tracing.flush()
  await a.close()
  // longer than the schedule delay set above: a timer-driven export would have arrived
  await new Promise((resolve) => setTimeout(resolve, 150))
  t.same(r.requests, [], 'the receiver got no request at all')
})

// ---------------------------------------------------------------------------------------------
// 2. Spans exported over OTLP/HTTP

t.test('one server span per request, exported to exportUrl', async (t) => {
  const r = await receiver(t)
  const a = Fastify()
  t.teardown(() => a.close())
  await a.register(tracing, exportTo(r, { serviceName: 'items-service' }))
  t.equal(a.tracing.recording, true, 'spans are recorded with an export URL')
  a.get('/items/:id', async (req) => ctxOf(req))
  a.get('/fail', async () => { throw new Error('boom') })

  const continued = (await a.inject({ url: '/items/42?color=red&size=9', headers: { traceparent: SAMPLED, tracestate: TRACESTATE } })).json<Ctx>()
  const started = (await a.inject({ url: '/items/7' })).json<Ctx>()
  const failedRes = await a.inject({ url: '/fail' })
  t.equal(failedRes.statusCode, 500)

  t.equal(continued.traceId, TRACE, 'the caller\'s trace id is kept')
  t.equal(continued.flags, 1, 'sampled')
  t.equal(continued.tracestate, TRACESTATE, 'the caller\'s tracestate')
  t.match(started.traceId, HEX32, 'a new trace id when no traceparent came')
  t.equal(started.flags, 1, 'a new trace is sampled by the default sampler')

  // no flush: the batch goes out by its 50 ms schedule
  await r.waitFor((spans) => inTrace(spans, TRACE).length >= 1 && inTrace(spans, started.traceId).length >= 1 && spans.some((s) => s.name === 'GET /fail'))
  await a.close() // nothing can arrive later

  const [span, more] = inTrace(r.spans, TRACE)
  t.equal(more, undefined, 'one span for the request with a traceparent')
  t.equal(span?.name, 'GET /items/:id', 'named by method and route pattern')
  t.equal(span?.kind, SERVER, 'a server span')
  t.equal(span?.spanId, continued.spanId, 'its span id is the request\'s span id')
  t.equal(span?.parentSpanId, PARENT, 'its parent is the caller\'s span')
  t.equal(span?.service, 'items-service', 'service.name from the serviceName option')
  t.equal(span?.attributes['http.request.method'], 'GET')
  t.equal(span?.attributes['http.route'], '/items/:id')
  t.equal(span?.attributes['http.response.status_code'], 200)
  t.equal(span?.attributes['url.path'], '/items/42', 'url.path without the query string')
  t.not(span?.status.code, ERROR, 'a 200 is not an error')

  const [root, more2] = inTrace(r.spans, started.traceId)
  t.equal(more2, undefined, 'one span for the request that started its trace')
  t.equal(root?.parentSpanId, '', 'no parent: the span is the trace\'s root')
  t.equal(root?.spanId, started.spanId)
  t.equal(root?.attributes['url.path'], '/items/7')

  const failed = r.spans.filter((s) => s.name === 'GET /fail')
  t.equal(failed.length, 1, 'one span for the failed request')
  t.equal(failed[0]?.status.code, ERROR, 'a 500 answer marks the span failed')
  t.equal(failed[0]?.attributes['http.response.status_code'], 500)
  t.equal(failed[0]?.parentSpanId, '')

  t.equal(r.spans.length, 3, 'three requests, three spans')
  t.ok(r.requests.every((q) => q.path === '/v1/traces' && String(q.contentType).includes('json')), 'every export was OTLP/HTTP JSON to the export URL')
})

t.test('a 4xx answer is not an error; a not-found request has no route', async (t) => {
  const r = await receiver(t)
  const a = Fastify()
  t.teardown(() => a.close())
  await a.register(tracing, exportTo(r))
  a.get('/items/:id', async (_req, reply) => reply.code(404).send({ missing: true }))
  await a.inject({ url: '/items/1', headers: { traceparent: SAMPLED } })
  await a.inject({ url: '/no/such/path?x=1', headers: { traceparent: `00-${'1'.repeat(32)}-${PARENT}-01` } })
  await a.close()
  const [known] = inTrace(r.spans, TRACE)
  t.equal(known?.attributes['http.response.status_code'], 404)
  t.not(known?.status.code, ERROR, 'a 404 from a route is not a server error')
  const [unknown] = inTrace(r.spans, '1'.repeat(32))
  t.equal(unknown?.attributes['http.response.status_code'], 404)
  t.equal(unknown?.attributes['http.route'], undefined, 'no http.route when no route matched')
  t.equal(unknown?.attributes['url.path'], '/no/such/path')
  t.equal(unknown?.service, 'unknown_service:node', 'the default service.name')
})

t.test('app.close() sends the spans still waiting for their batch', async (t) => {
  const r = await receiver(t)
  const a = Fastify()
  t.teardown(() => a.close())
  // a schedule far longer than the test: only the shutdown can send these spans
  await a.register(tracing, exportTo(r, { scheduledDelayMillis: 600_000 }))
  a.get('/items/:id', async (req) => ctxOf(req))
  const ids: string[] = []
  for (let i = 0; i < 3; i++) ids.push((await a.inject({ url: `/items/${i}` })).json<Ctx>().traceId)
  t.equal(r.requests.length, 0, 'nothing sent before the close (the batch waits for its schedule)')
  await a.close()
  t.same(ids.map((id) => inTrace(r.spans, id).length), [1, 1, 1], 'after app.close() resolves, the span of each request has been received')
})

t.test('app.tracing.flush() sends the ended spans at once', async (t) => {
  const r = await receiver(t)
  const a = Fastify()
  t.teardown(() => a.close())
  await a.register(tracing, exportTo(r, { scheduledDelayMillis: 600_000 }))
  a.get('/items/:id', async (req) => ctxOf(req))
  const c = (await a.inject({ url: '/items/1', headers: { traceparent: SAMPLED } })).json<Ctx>()
  t.equal(r.requests.length, 0, 'nothing sent before the flush')
  await a.tracing.flush()
  const got = inTrace(r.spans, TRACE)
  t.equal(got.length, 1, 'the span was received when flush() resolved')
  t.equal(got[0]?.spanId, c.spanId)
})

t.test('startChild: a child span of the request\'s span, and the traceparent its call carries', async (t) => {
  const r = await receiver(t)
  const a = Fastify()
  t.teardown(() => a.close())
  await a.register(tracing, exportTo(r, { serviceName: 'caller' }))
  a.get('/calls', async (req) => {
    const call = a.tracing.startChild(req, 'call', 'client', { 'peer.service': 'upstream' })
    call.end(200)
    call.end(503) // ignored: the span has ended
    const broken = a.tracing.startChild(req, 'broken call', 'client')
    broken.end(502)
    const work = a.tracing.startChild(req, 'work', 'internal')
    work.end(undefined, new Error('work refused'))
    return { ...ctxOf(req), call: call.traceparent, broken: broken.traceparent, work: work.traceparent }
  })
  const c = (await a.inject({ url: '/calls', headers: { traceparent: SAMPLED } })).json<Ctx & { call: string, broken: string, work: string }>()
  await a.close()

  const call = parseTraceparent(c.call)
  t.ok(call !== undefined, `the child's traceparent is well-formed (${c.call})`)
  t.equal(call?.traceId, c.traceId, 'in the request\'s trace')
  t.not(call?.parentId, c.spanId, 'naming a new span, not the request\'s')
  t.not(call?.parentId, PARENT, 'nor the caller\'s')
  t.equal(call?.flags, 1, 'sampled')

  const spans = inTrace(r.spans, TRACE)
  t.equal(spans.length, 4, 'the request\'s span and its three children')
  const byId = (id: string | undefined): ReceivedSpan | undefined => spans.find((s) => s.spanId === id)
  const server = byId(c.spanId)
  t.equal(server?.kind, SERVER)
  const child = byId(call?.parentId)
  t.ok(child !== undefined, 'the span the traceparent names was exported')
  t.equal(child?.parentSpanId, c.spanId, 'its parent is the request\'s span')
  t.equal(child?.name, 'call')
  t.equal(child?.kind, CLIENT, 'a client span')
  t.equal(child?.service, 'caller')
  t.equal(child?.attributes['peer.service'], 'upstream', 'the attributes given')
  t.equal(child?.attributes['http.response.status_code'], 200, 'the status given to end(); the second end() changed nothing')
  t.not(child?.status.code, ERROR, 'not failed')

  const broken = byId(parseTraceparent(c.broken)?.parentId)
  t.equal(broken?.parentSpanId, c.spanId)
  t.equal(broken?.status.code, ERROR, 'a 502 marks the child failed')
  const work = byId(parseTraceparent(c.work)?.parentId)
  t.equal(work?.kind, INTERNAL, 'an internal span')
  t.equal(work?.parentSpanId, c.spanId)
  t.equal(work?.status.code, ERROR, 'an error marks the child failed')
  t.equal(work?.status.message, 'work refused', 'with the error\'s message')
})

t.test('a request the client abandons ends its span as failed', async (t) => {
  const r = await receiver(t)
  const a = Fastify()
  t.teardown(() => a.close())
  await a.register(tracing, exportTo(r, { scheduledDelayMillis: 600_000 }))
  let arrived!: () => void
  const inHandler = new Promise<void>((resolve) => { arrived = resolve })
  let release!: () => void
  const gate = new Promise<void>((resolve) => { release = resolve })
  let abortSeen!: () => void
  const aborted = new Promise<void>((resolve) => { abortSeen = resolve })
  a.addHook('onRequestAbort', (_req, done) => { abortSeen(); done() })
  a.get('/slow', async () => { arrived(); await gate; return 'late' })
  const base = await a.listen({ port: 0, host: '127.0.0.1' })
  const ac = new AbortController()
  const call = fetch(`${base}/slow`, { headers: { traceparent: SAMPLED }, signal: ac.signal }).catch(() => undefined)
  await inHandler
  ac.abort()
  await aborted
  await call
  release()
  await a.close()
  const spans = inTrace(r.spans, TRACE)
  t.equal(spans.length, 1, 'one span for the abandoned request')
  t.equal(spans[0]?.name, 'GET /slow')
  t.equal(spans[0]?.status.code, ERROR, 'marked failed')
  t.equal(spans[0]?.status.message, 'client closed the request')
})

t.test('tracerProvider: spans go to the application\'s provider, which outlives each app', async (t) => {
  const r = await receiver(t)
  const other = await receiver(t)
  const provider = createOtlpProvider({ url: `${r.url}/v1/traces`, serviceName: 'shared', scheduledDelayMillis: 600_000, log: { warn: () => {} } })
  t.teardown(() => provider.shutdown())
  const traces: string[] = []
  for (let i = 0; i < 2; i++) {
    // as a reloading gateway does: one provider, a new app each time
    const a = Fastify()
    t.teardown(() => a.close())
    await a.register(tracing, { tracerProvider: provider.provider, exportUrl: `${other.url}/v1/traces` })
    t.equal(a.tracing.recording, true, `app ${i + 1}: recording`)
    a.get('/items/:id', async (req) => ctxOf(req))
    traces.push((await a.inject({ url: `/items/${i}` })).json<Ctx>().traceId)
    if (i === 0) {
      await a.close()
      t.equal(r.requests.length, 0, 'closing an app does not shut down a provider it was given')
    } else {
      await a.tracing.flush()
      t.same(traces.map((id) => inTrace(r.spans, id).map((s) => s.name)), [['GET /items/:id'], ['GET /items/:id']], 'app.tracing.flush() flushed the provider: the span of each app')
      t.equal(r.spans[0]?.service, 'shared', 'with the provider\'s resource')
    }
  }
  await provider.shutdown()
  t.same(other.requests, [], 'exportUrl is not used when a tracerProvider is given')
})

// ---------------------------------------------------------------------------------------------
// 3. Sampling

t.test('sampler always_off: no span exported, the sampled flag clear', async (t) => {
  const r = await receiver(t)
  const off = Fastify()
  t.teardown(() => off.close())
  await off.register(tracing, exportTo(r, { sampler: 'always_off' }))
  off.get('/', async (req) => ctxOf(req))
  const withParent = (await off.inject({ url: '/', headers: { traceparent: SAMPLED } })).json<Ctx>()
  const without = (await off.inject({ url: '/' })).json<Ctx>()
  t.equal(withParent.traceId, TRACE, 'the caller\'s trace is still continued')
  t.equal(withParent.flags & 1, 0, 'the sampled bit is clear, although the caller sampled')
  t.equal(without.flags & 1, 0, 'the sampled bit is clear on a new trace')
  t.match(without.traceId, HEX32)
  await off.close()
  t.same(r.spans, [], 'no span exported')

  // the same receiver gets the spans of an app that samples: the check above could see them
  const on = Fastify()
  t.teardown(() => on.close())
  await on.register(tracing, exportTo(r, { sampler: 'always_on' }))
  on.get('/', async (req) => ctxOf(req))
  const c = (await on.inject({ url: '/', headers: { traceparent: NOT_SAMPLED } })).json<Ctx>()
  t.equal(c.flags & 1, 1, 'always_on samples even under an unsampled caller')
  await on.close()
  t.equal(inTrace(r.spans, TRACE).length, 1, 'control: always_on exports its span to the same receiver')
})

t.test('sampler parentbased_always_on follows the caller\'s sampled flag', async (t) => {
  const r = await receiver(t)
  const a = Fastify()
  t.teardown(() => a.close())
  await a.register(tracing, exportTo(r, { sampler: 'parentbased_always_on' }))
  a.get('/', async (req) => ctxOf(req))
  const SAMPLED_TRACE = 'a'.repeat(32)
  const no = (await a.inject({ url: '/', headers: { traceparent: NOT_SAMPLED } })).json<Ctx>()
  const yes = (await a.inject({ url: '/', headers: { traceparent: `00-${SAMPLED_TRACE}-${PARENT}-01` } })).json<Ctx>()
  const root = (await a.inject({ url: '/' })).json<Ctx>()
  t.equal(no.flags, 0, 'the unsampled caller: not sampled')
  t.equal(yes.flags, 1, 'the sampled caller: sampled')
  t.equal(root.flags, 1, 'no caller: the root is sampled')
  await a.close()
  t.equal(inTrace(r.spans, TRACE).length, 0, 'the request under an unsampled caller was not exported')
  t.equal(inTrace(r.spans, SAMPLED_TRACE).length, 1, 'the request under a sampled caller was')
  t.equal(inTrace(r.spans, root.traceId).length, 1, 'and the one that started its trace')
})

t.test('sampler traceidratio with ratio 0 exports nothing; ratio 1 everything', async (t) => {
  const r = await receiver(t)
  const none = Fastify()
  t.teardown(() => none.close())
  await none.register(tracing, exportTo(r, { sampler: 'traceidratio', samplerRatio: 0 }))
  none.get('/', async (req) => ctxOf(req))
  const flags: number[] = []
  for (let i = 0; i < 10; i++) flags.push((await none.inject({ url: '/', headers: i % 2 === 0 ? { traceparent: `00-${newTrace(i)}-${PARENT}-01` } : {} })).json<Ctx>().flags)
  t.same(flags, Array(10).fill(0), 'ten requests, none sampled (a sampled caller neither: the sampler ignores the parent)')
  await none.close()
  t.same(r.spans, [], 'none exported')

  const all = Fastify()
  t.teardown(() => all.close())
  await all.register(tracing, exportTo(r, { sampler: 'traceidratio', samplerRatio: 1 }))
  all.get('/', async (req) => ctxOf(req))
  for (let i = 0; i < 4; i++) await all.inject({ url: '/' })
  await all.close()
  t.equal(r.spans.length, 4, 'control: ratio 1 exports each of four requests')
})

function newTrace (i: number): string {
  return (i + 1).toString(16).padStart(32, 'c')
}

// ---------------------------------------------------------------------------------------------
// 4. Export headers

t.test('exportHeaders are sent with each export', async (t) => {
  const r = await recordingServer(t)
  const a = Fastify()
  t.teardown(() => a.close())
  await a.register(tracing, { exportUrl: `${r.url}/v1/traces`, exportHeaders: { 'x-api-key': 'k' }, serviceName: 'with-key' })
  a.get('/', async () => 'ok')
  await a.inject({ url: '/' })
  await a.close()
  t.equal(r.seen.length, 1, 'one export')
  t.equal(r.seen[0]?.path, '/v1/traces', 'to the export URL\'s path')
  t.equal(r.seen[0]?.headers['x-api-key'], 'k', 'with the x-api-key header')
  t.match(r.seen[0]?.body, /"with-key"/, 'carrying the span of the service')
})

t.test('options read from the OpenTelemetry variables drive a working plugin', async (t) => {
  const r = await recordingServer(t)
  const opts = tracingOptionsFromEnv({
    OTEL_EXPORTER_OTLP_ENDPOINT: `${r.url}/`,
    OTEL_EXPORTER_OTLP_HEADERS: 'X-Api-Key=s3cr%20t,x-tenant=acme',
    OTEL_BSP_SCHEDULE_DELAY: '600000'
  }, 'env-service')
  const a = Fastify()
  t.teardown(() => a.close())
  await a.register(tracing, opts)
  a.get('/', async () => 'ok')
  await a.inject({ url: '/' })
  t.equal(r.seen.length, 0, 'OTEL_BSP_SCHEDULE_DELAY holds the batch')
  await a.close()
  t.equal(r.seen.length, 1, 'sent at close')
  t.equal(r.seen[0]?.path, '/v1/traces')
  t.equal(r.seen[0]?.headers['x-api-key'], 's3cr t', 'the decoded header value')
  t.equal(r.seen[0]?.headers['x-tenant'], 'acme')
  t.match(r.seen[0]?.body, /"env-service"/, 'the default service name')
})

// ---------------------------------------------------------------------------------------------
// 5. Option errors

t.test('bad options fail the registration, naming the option', async (t) => {
  const cases: Array<[string, TracingPluginOptions, RegExp]> = [
    ['an ftp export URL', { exportUrl: 'ftp://x' }, /option "exportUrl"/],
    ['an export URL that is no URL', { exportUrl: 'not a url' }, /option "exportUrl"/],
    ['an unknown sampler', { sampler: 'sometimes' as SamplerName }, /option "sampler"/],
    ['samplerRatio 2', { samplerRatio: 2 }, /option "samplerRatio"/],
    ['samplerRatio -0.5', { samplerRatio: -0.5 }, /option "samplerRatio"/],
    ['samplerRatio NaN', { samplerRatio: Number.NaN }, /option "samplerRatio"/],
    ['scheduledDelayMillis 0', { scheduledDelayMillis: 0 }, /option "scheduledDelayMillis"/],
    ['scheduledDelayMillis 2.5', { scheduledDelayMillis: 2.5 }, /option "scheduledDelayMillis"/]
  ]
  for (const [what, opts, message] of cases) {
    const a = app(t)
    a.register(tracing, opts)
    await t.rejects(async () => { await a.ready() }, { message }, `${what}: refused`)
  }
  t.match(await registrationError({ exportUrl: 'ftp://x' }), /ftp:\/\/x/, 'the exportUrl message shows the value given')
  t.match(await registrationError({ sampler: 'sometimes' as SamplerName }), /parentbased_always_on/, 'the sampler message lists the known names')

  // the edges of each range are accepted
  const ok = app(t)
  ok.register(tracing, { exportUrl: 'https://collector.example:4318/v1/traces', sampler: 'parentbased_traceidratio', samplerRatio: 0, scheduledDelayMillis: 1 })
  await t.resolves(async () => { await ok.ready() }, 'https, a known sampler, ratio 0 and a 1 ms delay are accepted')
  const ok1 = app(t)
  ok1.register(tracing, { samplerRatio: 1 })
  await t.resolves(async () => { await ok1.ready() }, 'ratio 1 is accepted')
})

async function registrationError (opts: TracingPluginOptions): Promise<string> {
  const a = Fastify()
  try {
    await a.register(tracing, opts)
    return ''
  } catch (err) {
    return (err as Error).message
  } finally {
    await a.close().catch(() => undefined)
  }
}

// ---------------------------------------------------------------------------------------------
// 6. tracingOptionsFromEnv

/** Runs tracingOptionsFromEnv(env) and checks it throws a TracingConfigError naming `variable`. */
function throwsFor (t: Test, env: Record<string, string>, variable: string, secret?: string): void {
  let err: unknown
  try {
    tracingOptionsFromEnv(env)
  } catch (e) {
    err = e
  }
  const label = JSON.stringify(env)
  t.ok(err instanceof TracingConfigError, `${label}: a TracingConfigError`)
  t.equal((err as TracingConfigError | undefined)?.variable, variable, `${label}: variable is ${variable}`)
  t.match((err as Error | undefined)?.message, variable, `${label}: the message names ${variable}`)
  if (secret !== undefined) t.notOk((err as Error | undefined)?.message.includes(secret), `${label}: the message does not show the value`)
}

t.test('tracingOptionsFromEnv: the export URL', async (t) => {
  t.same(tracingOptionsFromEnv({}), {}, 'no variable: no export URL, nothing set')
  t.same(tracingOptionsFromEnv({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318' }), { exportUrl: 'http://c:4318/v1/traces' }, 'the base URL + /v1/traces')
  t.same(tracingOptionsFromEnv({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318/' }), { exportUrl: 'http://c:4318/v1/traces' }, 'with a trailing slash: no double slash')
  t.equal(tracingOptionsFromEnv({ OTEL_EXPORTER_OTLP_ENDPOINT: 'https://c.example/otel/' }).exportUrl, 'https://c.example/otel/v1/traces', 'a base path is kept')
  t.equal(tracingOptionsFromEnv({ OTEL_EXPORTER_OTLP_ENDPOINT: '  http://c:4318  ' }).exportUrl, 'http://c:4318/v1/traces', 'surrounding blanks ignored')
  t.equal(tracingOptionsFromEnv({ OTEL_EXPORTER_OTLP_ENDPOINT: '' }).exportUrl, undefined, 'an empty variable counts as unset')
  t.equal(tracingOptionsFromEnv({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://t:4318/custom' }).exportUrl, 'http://t:4318/custom', 'the traces endpoint is taken as the full URL')
  t.equal(tracingOptionsFromEnv({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318', OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://t:4318/custom' }).exportUrl, 'http://t:4318/custom', 'the traces endpoint wins over the base')
  const endpoint = { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318', OTEL_EXPORTER_OTLP_HEADERS: 'x-api-key=k' }
  t.same(tracingOptionsFromEnv({ ...endpoint, OTEL_TRACES_EXPORTER: 'none' }), {}, 'OTEL_TRACES_EXPORTER=none: no export URL (nor headers)')
  t.same(tracingOptionsFromEnv({ ...endpoint, OTEL_SDK_DISABLED: 'true' }), {}, 'OTEL_SDK_DISABLED=true: no export URL (nor headers)')
  t.same(tracingOptionsFromEnv({ ...endpoint, OTEL_TRACES_EXPORTER: 'none', OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://t:4318/v1/traces' }), {}, 'none wins over the traces endpoint too')
  t.same(tracingOptionsFromEnv({ ...endpoint, OTEL_SDK_DISABLED: 'TRUE' }), {}, 'OTEL_SDK_DISABLED is read without regard to case')
  t.equal(tracingOptionsFromEnv({ ...endpoint, OTEL_SDK_DISABLED: 'false' }).exportUrl, 'http://c:4318/v1/traces', 'OTEL_SDK_DISABLED=false: exported')
  t.equal(tracingOptionsFromEnv({ ...endpoint, OTEL_TRACES_EXPORTER: 'otlp' }).exportUrl, 'http://c:4318/v1/traces', 'OTEL_TRACES_EXPORTER=otlp: exported')
  throwsFor(t, { OTEL_EXPORTER_OTLP_ENDPOINT: 'ftp://c' }, 'OTEL_EXPORTER_OTLP_ENDPOINT')
  throwsFor(t, { OTEL_EXPORTER_OTLP_ENDPOINT: 'not a url' }, 'OTEL_EXPORTER_OTLP_ENDPOINT')
  throwsFor(t, { OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'collector:4318' }, 'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT')
  throwsFor(t, { OTEL_TRACES_EXPORTER: 'zipkin' }, 'OTEL_TRACES_EXPORTER')
})

t.test('tracingOptionsFromEnv: OTEL_EXPORTER_OTLP_HEADERS', async (t) => {
  const base = { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318' }
  t.same(tracingOptionsFromEnv({ ...base, OTEL_EXPORTER_OTLP_HEADERS: 'Api-Key=secret%20value%2Cwith%3Dsigns, X-Tenant = acme ,' }).exportHeaders,
    { 'api-key': 'secret value,with=signs', 'x-tenant': 'acme' }, 'names lower-cased, values URL-decoded and trimmed, an empty pair ignored')
  t.same(tracingOptionsFromEnv({ ...base, OTEL_EXPORTER_OTLP_HEADERS: 'authorization=Basic dXNlcjpwYXNz==' }).exportHeaders,
    { authorization: 'Basic dXNlcjpwYXNz==' }, 'only the first = separates name and value')
  const secret = 's3cr3t-Value-42'
  throwsFor(t, { ...base, OTEL_EXPORTER_OTLP_HEADERS: `api key=${secret}` }, 'OTEL_EXPORTER_OTLP_HEADERS', secret)
  throwsFor(t, { ...base, OTEL_EXPORTER_OTLP_HEADERS: `x-ok=1,${secret}` }, 'OTEL_EXPORTER_OTLP_HEADERS', secret)
  throwsFor(t, { ...base, OTEL_EXPORTER_OTLP_HEADERS: `=${secret}` }, 'OTEL_EXPORTER_OTLP_HEADERS', secret)
  throwsFor(t, { ...base, OTEL_EXPORTER_OTLP_HEADERS: `x-api-key=${secret}%ZZ` }, 'OTEL_EXPORTER_OTLP_HEADERS', secret)
  throwsFor(t, { ...base, OTEL_EXPORTER_OTLP_HEADERS: `x-api-key=${secret}%0D%0AX-Injected: 1` }, 'OTEL_EXPORTER_OTLP_HEADERS', secret)
})

t.test('tracingOptionsFromEnv: sampler, ratio, schedule and service name', async (t) => {
  t.same(tracingOptionsFromEnv({ OTEL_TRACES_SAMPLER: 'parentbased_traceidratio', OTEL_TRACES_SAMPLER_ARG: '0.25', OTEL_BSP_SCHEDULE_DELAY: '250' }),
    { sampler: 'parentbased_traceidratio', samplerRatio: 0.25, scheduledDelayMillis: 250 }, 'sampler, ratio and delay read')
  t.equal(tracingOptionsFromEnv({ OTEL_TRACES_SAMPLER_ARG: '0' }).samplerRatio, 0, 'ratio 0')
  t.equal(tracingOptionsFromEnv({ OTEL_TRACES_SAMPLER_ARG: '1' }).samplerRatio, 1, 'ratio 1')
  throwsFor(t, { OTEL_TRACES_SAMPLER: 'sometimes' }, 'OTEL_TRACES_SAMPLER')
  throwsFor(t, { OTEL_TRACES_SAMPLER: 'AlwaysOn' }, 'OTEL_TRACES_SAMPLER')
  throwsFor(t, { OTEL_TRACES_SAMPLER_ARG: '1.5' }, 'OTEL_TRACES_SAMPLER_ARG')
  throwsFor(t, { OTEL_TRACES_SAMPLER_ARG: 'abc' }, 'OTEL_TRACES_SAMPLER_ARG')
  throwsFor(t, { OTEL_TRACES_SAMPLER_ARG: '-0.1' }, 'OTEL_TRACES_SAMPLER_ARG')
  throwsFor(t, { OTEL_BSP_SCHEDULE_DELAY: '0' }, 'OTEL_BSP_SCHEDULE_DELAY')
  throwsFor(t, { OTEL_BSP_SCHEDULE_DELAY: '1.5' }, 'OTEL_BSP_SCHEDULE_DELAY')
  throwsFor(t, { OTEL_BSP_SCHEDULE_DELAY: 'soon' }, 'OTEL_BSP_SCHEDULE_DELAY')
  throwsFor(t, { OTEL_SDK_DISABLED: 'maybe' }, 'OTEL_SDK_DISABLED')
  t.equal(tracingOptionsFromEnv({ OTEL_SERVICE_NAME: 'from-env' }, 'the-default').serviceName, 'from-env', 'OTEL_SERVICE_NAME wins over the default name')
  t.equal(tracingOptionsFromEnv({}, 'the-default').serviceName, 'the-default', 'else the default name')
  t.equal(tracingOptionsFromEnv({ OTEL_SERVICE_NAME: '   ' }, 'the-default').serviceName, 'the-default', 'a blank OTEL_SERVICE_NAME counts as unset')
  t.equal(tracingOptionsFromEnv({}).serviceName, undefined, 'no name at all: none set (the plugin\'s default applies)')
})

t.test('tracingOptionsFromEnv reads process.env by default', async (t) => {
  setEnv(t, { OTEL_SERVICE_NAME: 'process-env-service', OTEL_EXPORTER_OTLP_ENDPOINT: 'http://from-process:4318' })
  const opts = tracingOptionsFromEnv()
  t.equal(opts.serviceName, 'process-env-service')
  t.equal(opts.exportUrl, 'http://from-process:4318/v1/traces')
})

// ---------------------------------------------------------------------------------------------
// 7. The trace context calls carry upstream (with @portcullis/propagation)

t.test('with tracing, upstream calls carry the request\'s span as their parent', async (t) => {
  const up = await recordingServer(t)
  const a = app(t)
  await a.register(tracing)
  await a.register(propagation)
  const client = a.serviceClient(up.url)
  a.get('/proxy', async (req) => { await client.get('/x'); return ctxOf(req) })

  const c = (await a.inject({ url: '/proxy', headers: { traceparent: SAMPLED, tracestate: TRACESTATE } })).json<Ctx>()
  t.equal(up.seen.length, 1, 'the upstream was called')
  t.equal(up.seen[0]?.headers.traceparent, `00-${TRACE}-${c.spanId}-01`, 'traceparent: the caller\'s trace, the request\'s span, the caller\'s flags')
  t.not(c.spanId, PARENT)
  t.equal(up.seen[0]?.headers.tracestate, TRACESTATE, 'the caller\'s tracestate')

  const fresh = (await a.inject({ url: '/proxy' })).json<Ctx>()
  t.equal(up.seen[1]?.headers.traceparent, `00-${fresh.traceId}-${fresh.spanId}-00`, 'no traceparent came: the new trace is passed on')
  t.equal(up.seen[1]?.headers.tracestate, undefined, 'and no tracestate')

  const bad = (await a.inject({ url: '/proxy', headers: { traceparent: MALFORMED[0]![1], tracestate: TRACESTATE } })).json<Ctx>()
  t.equal(up.seen[2]?.headers.traceparent, `00-${bad.traceId}-${bad.spanId}-00`, 'a malformed traceparent: the new trace is passed on')
  t.equal(up.seen[2]?.headers.tracestate, undefined, 'and its tracestate is not')
})

t.test('with recording, the upstream\'s parent is the exported server span', async (t) => {
  const up = await recordingServer(t)
  const r = await receiver(t)
  const a = Fastify()
  t.teardown(() => a.close())
  await a.register(tracing, exportTo(r))
  await a.register(propagation)
  const client = a.serviceClient(up.url)
  a.get('/proxy/:id', async (req) => { await client.get('/x'); return ctxOf(req) })
  const c = (await a.inject({ url: '/proxy/1', headers: { traceparent: SAMPLED, tracestate: TRACESTATE } })).json<Ctx>()
  const bad = (await a.inject({ url: '/proxy/2', headers: { traceparent: MALFORMED[0]![1], tracestate: TRACESTATE } })).json<Ctx>()
  await a.close()
  t.equal(c.tracestate, TRACESTATE, 'the caller\'s tracestate is kept')
  t.equal(up.seen[0]?.headers.tracestate, TRACESTATE, 'and passed upstream')
  t.not(bad.traceId, TRACE, 'a malformed traceparent: a new trace')
  t.equal(bad.tracestate, null, 'its tracestate dropped')
  t.equal(up.seen[1]?.headers.traceparent, `00-${bad.traceId}-${bad.spanId}-01`, 'the new, sampled trace passed upstream')
  t.equal(up.seen[1]?.headers.tracestate, undefined, 'without the tracestate')
  const sent = parseTraceparent(up.seen[0]?.headers.traceparent)
  const [server] = inTrace(r.spans, TRACE)
  t.equal(sent?.traceId, TRACE)
  t.equal(sent?.parentId, server?.spanId, 'the traceparent upstream names the exported server span')
  t.equal(server?.spanId, c.spanId)
  t.equal(server?.name, 'GET /proxy/:id')
})

t.test('tracing registered after propagation: routes added after both still carry the request\'s span', async (t) => {
  const up = await recordingServer(t)
  const a = app(t)
  await a.register(propagation)
  await a.register(tracing)
  const client = a.serviceClient(up.url)
  a.get('/proxy', async (req) => { await client.get('/x'); return ctxOf(req) })
  const c = (await a.inject({ url: '/proxy', headers: { traceparent: SAMPLED, tracestate: TRACESTATE } })).json<Ctx>()
  t.equal(up.seen[0]?.headers.traceparent, `00-${TRACE}-${c.spanId}-01`)
  t.equal(up.seen[0]?.headers.tracestate, TRACESTATE)
})

t.test('without tracing, a valid traceparent passes through unchanged and an invalid one is not sent', async (t) => {
  const up = await recordingServer(t)
  const a = app(t)
  await a.register(propagation)
  const client = a.serviceClient(up.url)
  a.get('/proxy', async () => { await client.get('/x'); return { ok: true } })

  await a.inject({ url: '/proxy', headers: { traceparent: SAMPLED, tracestate: TRACESTATE } })
  t.equal(up.seen[0]?.headers.traceparent, SAMPLED, 'the caller\'s traceparent, unchanged')
  t.equal(up.seen[0]?.headers.tracestate, TRACESTATE, 'with its tracestate')

  const future = `01-${TRACE}-${PARENT}-01-more`
  await a.inject({ url: '/proxy', headers: { traceparent: future } })
  t.equal(up.seen[1]?.headers.traceparent, future, 'a valid higher-version traceparent passes through as it came')

  for (const [i, [what, header]] of MALFORMED.entries()) {
    await a.inject({ url: '/proxy', headers: { traceparent: header, tracestate: TRACESTATE } })
    const seen = up.seen[2 + i]
    t.equal(seen?.headers.traceparent, undefined, `${what}: no traceparent sent`)
    t.equal(seen?.headers.tracestate, undefined, `${what}: no tracestate sent`)
  }
  await a.inject({ url: '/proxy' })
  t.equal(up.seen.length, 3 + MALFORMED.length, 'every call reached the upstream')
  t.equal(up.seen.at(-1)?.headers.traceparent, undefined, 'no traceparent came: none sent')
})

t.test('a route registered before the plugin: Fastify\'s own lines through reply.log carry the trace fields too', async (t) => {
  const lines: Array<Record<string, unknown>> = []
  const stream = { write: (s: string) => { lines.push(JSON.parse(s) as Record<string, unknown>) } }
  const app = Fastify({ logger: { level: 'info', stream } })
  t.teardown(() => app.close())
  app.get('/early', async () => { throw new Error('boom') }) // before the plugin
  await app.register(tracing)
  const res = await app.inject({ url: '/early', headers: { traceparent: SAMPLED } })
  t.equal(res.statusCode, 500)
  const completed = lines.find((l) => l.msg === 'request completed')
  t.equal(completed?.trace_id, TRACE, 'Fastify\'s "request completed" line (reply.log) carries the trace id')
  const failed = lines.find((l) => l.level === 50)
  t.equal(failed?.trace_id, TRACE, 'the default error handler\'s line carries it too')
})

t.test('request.traceContext is exactly the trace context, also when spans are recorded (returned as JSON)', async (t) => {
  const receiver = await startOtlpReceiver()
  t.teardown(() => receiver.close())
  for (const exportUrl of [undefined, `${receiver.url}/v1/traces`]) {
    const app = Fastify()
    await app.register(tracing, exportUrl === undefined ? {} : { exportUrl })
    let frozen = false
    app.get('/ctx', async (req) => { frozen = Object.isFrozen(req.traceContext); return req.traceContext })
    const res = await app.inject({ url: '/ctx', headers: { traceparent: SAMPLED, tracestate: 'a=1' } })
    t.equal(res.statusCode, 200, `${exportUrl === undefined ? 'no export' : 'export'}: 200`)
    const body = res.json() as Record<string, unknown>
    t.same(Object.keys(body).sort(), ['flags', 'spanId', 'traceId', 'tracestate'], 'the four members, nothing internal')
    t.equal(body.traceId, TRACE)
    t.ok(frozen, 'frozen: one context per request, not changed by a handler')
    await app.close()
  }
})
