import t, { type Test } from 'tap'
import { startOtlpReceiver, type ReceivedSpan } from './helpers/otlp-receiver.js'
import { call, runningStack } from './helpers/stack.js'

// `portcullis start` with OTEL_EXPORTER_OTLP_ENDPOINT set to an OTLP/HTTP receiver on a free port:
// one order placed through the gateway is one trace holding spans from the gateway, order-service,
// user-service and product-service, each linked to its true parent; the trace id is in the log lines
// of every process that served the order.
t.setTimeout(120_000)

const SERVER = 2
const CLIENT = 3


function describe (spans: ReceivedSpan[]): string {
  return spans.map((s) => `${s.service}:${s.kind}:${s.name} ${s.spanId}<-${s.parentSpanId}`).join('\n')
}

t.test('one order through the gateway is one trace across gateway, order, user and product services', async (t) => {
  const receiver = await startOtlpReceiver()
  t.teardown(() => receiver.close())
  const { stack } = await runningStack(t, { OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url, OTEL_BSP_SCHEDULE_DELAY: '100' })
  const u = stack.urls
  const login = await call('POST', `${u.auth}/auth/login`, { body: { username: 'alice', password: 'alice-demo-pass' } })
  t.equal(login.status, 200, 'alice logs in')
  const token = login.body.access_token as string
  const order = { items: [{ productId: 'p-1', quantity: 1 }, { productId: 'p-2', quantity: 2 }] }

  // The checks for one order's trace: what each process sent and how the spans link.
  const checkTrace = async (t: Test, traceId: string, callerSpan: string | undefined): Promise<void> => {
    const inTrace = (spans: ReceivedSpan[]): ReceivedSpan[] => spans.filter((s) => s.traceId === traceId)
    const spans = inTrace(await receiver.waitFor((all) => {
      const mine = inTrace(all)
      // the six spans, each exported when it ends (the gateway's and order-service's last)
      return mine.length >= 6 && mine.some((s) => s.service === 'portcullis-gateway' && s.kind === SERVER) && mine.some((s) => s.service === 'order-service')
    }))
    t.comment(describe(spans))
    const one = (service: string, kind: number): ReceivedSpan[] => spans.filter((s) => s.service === service && s.kind === kind)
    const gwServer = one('portcullis-gateway', SERVER)
    const gwClient = one('portcullis-gateway', CLIENT)
    const orderSpans = one('order-service', SERVER)
    const userSpans = one('user-service', SERVER)
    const productSpans = one('product-service', SERVER)
    t.equal(gwServer.length, 1, 'the gateway: one server span')
    t.equal(gwClient.length, 1, 'the gateway: one client span (its call to order-service)')
    t.equal(orderSpans.length, 1, 'order-service: one server span')
    t.equal(userSpans.length, 1, 'user-service: one server span (GET /users/me)')
    t.equal(productSpans.length, 2, 'product-service: one server span per product looked up')
    t.equal(spans.length, 6, 'nothing else in the trace')
    const gw = gwServer[0]!
    t.equal(gw.parentSpanId, callerSpan ?? '', callerSpan === undefined ? 'the gateway started the trace (its span is the root)' : 'the gateway\'s span is a child of the caller\'s span (traceparent accepted)')
    t.equal(gw.name, 'POST /api/orders', 'the gateway span is named by method and route pattern')
    t.equal(gw.attributes['http.response.status_code'], 201)
    t.equal(gw.attributes['http.route'], '/api/orders')
    t.equal(gwClient[0]!.name, 'POST orders', 'the upstream call is named by method and route name')
    t.equal(gwClient[0]!.parentSpanId, gw.spanId, 'the gateway\'s upstream call is a child of its request span')
    t.equal(gwClient[0]!.attributes['http.response.status_code'], 201)
    t.equal(orderSpans[0]!.parentSpanId, gwClient[0]!.spanId, 'order-service\'s span is a child of the gateway\'s upstream call')
    t.equal(orderSpans[0]!.name, 'POST /orders')
    t.equal(userSpans[0]!.parentSpanId, orderSpans[0]!.spanId, 'user-service\'s span is a child of order-service\'s span')
    t.equal(userSpans[0]!.name, 'GET /users/me')
    for (const p of productSpans) {
      t.equal(p.parentSpanId, orderSpans[0]!.spanId, 'product-service\'s span is a child of order-service\'s span')
      t.equal(p.name, 'GET /products/:id')
    }
    t.ok(spans.every((s) => s.status.code !== 2), 'no span marked failed')
    // the trace id in the log lines of every process that served the order
    await new Promise((resolve) => setTimeout(resolve, 400)) // the gateway writes its log in batches (200 ms)
    for (const proc of ['gateway', 'order', 'user', 'product']) {
      const lines = stack.logs(proc).filter((l) => l.rec.trace_id === traceId)
      t.ok(lines.length >= 1, `${proc}: ${lines.length} log line(s) with trace_id ${traceId}`)
    }
    const created = stack.logs('order').find((l) => l.rec.msg === 'order created' && l.rec.trace_id === traceId)
    t.ok(created !== undefined, 'order-service\'s "order created" line carries the trace id')
  }

  await t.test('a caller\'s traceparent is continued', async (t) => {
    const traceId = '4bf92f3577b34da6a3ce929d0e0e4736'
    const parent = '00f067aa0ba902b7'
    const res = await call('POST', `${u.gateway}/api/orders`, { token, body: order, headers: { traceparent: `00-${traceId}-${parent}-01`, tracestate: 'vendor=opaque' } })
    t.equal(res.status, 201, 'the order is placed')
    await checkTrace(t, traceId, parent)
  })

  await t.test('without one, the gateway starts the trace', async (t) => {
    const res = await call('POST', `${u.gateway}/api/orders`, { token, body: order })
    t.equal(res.status, 201, 'the order is placed')
    const requestId = res.body.requestId as string
    await new Promise((resolve) => setTimeout(resolve, 400))
    const access = stack.logs('gateway').find((l) => l.rec.reqId === requestId && l.rec.msg === 'request completed')
    t.ok(access !== undefined, 'the gateway\'s access line for the order')
    const traceId = String(access?.rec.trace_id)
    t.match(traceId, /^[0-9a-f]{32}$/, 'a new trace id on the access line')
    await checkTrace(t, traceId, undefined)
  })

  await t.test('a malformed traceparent starts a new trace and its tracestate is dropped', async (t) => {
    const res = await call('POST', `${u.gateway}/api/orders`, { token, body: order, headers: { traceparent: '00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01', tracestate: 'vendor=opaque' } })
    t.equal(res.status, 201)
    await new Promise((resolve) => setTimeout(resolve, 400))
    const access = stack.logs('gateway').find((l) => l.rec.reqId === res.body.requestId && l.rec.msg === 'request completed')
    const traceId = String(access?.rec.trace_id)
    t.not(traceId, '4bf92f3577b34da6a3ce929d0e0e4736', 'upper-case hex is not a valid traceparent: not continued')
    await checkTrace(t, traceId, undefined)
  })
})
