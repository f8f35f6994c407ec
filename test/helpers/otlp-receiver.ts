import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'

/** One span as an OTLP/HTTP JSON export carries it, with its resource's `service.name`. */
export interface ReceivedSpan {
  service: string
  traceId: string
  spanId: string
  parentSpanId: string
  name: string
  /** OTLP SpanKind: 1 internal, 2 server, 3 client. */
  kind: number
  attributes: Record<string, unknown>
  status: { code?: number, message?: string }
}

export interface OtlpReceiver {
  /** Base URL, as OTEL_EXPORTER_OTLP_ENDPOINT takes it (spans are posted to `<url>/v1/traces`). */
  url: string
  spans: ReceivedSpan[]
  /** Export requests received (any path). */
  requests: Array<{ path: string, contentType: string | undefined }>
  /** Resolves once `pred` holds for the spans received, or rejects after `ms`. */
  waitFor(pred: (spans: ReceivedSpan[]) => boolean, ms?: number): Promise<ReceivedSpan[]>
  close(): Promise<void>
}

type AnyValue = { stringValue?: string, intValue?: string | number, boolValue?: boolean, doubleValue?: number }
const valueOf = (v: AnyValue): unknown => v.stringValue ?? (v.intValue !== undefined ? Number(v.intValue) : v.boolValue ?? v.doubleValue)
const attrs = (list: Array<{ key: string, value: AnyValue }> | undefined): Record<string, unknown> =>
  Object.fromEntries((list ?? []).map((a) => [a.key, valueOf(a.value)]))

/** An OTLP/HTTP (JSON) trace receiver on 127.0.0.1 and a free port: answers 200 and keeps every span. */
export async function startOtlpReceiver (): Promise<OtlpReceiver> {
  const spans: ReceivedSpan[] = []
  const requests: OtlpReceiver['requests'] = []
  const waiters = new Set<() => void>()
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      requests.push({ path: req.url ?? '', contentType: req.headers['content-type'] })
      if (req.url === '/v1/traces' && String(req.headers['content-type']).includes('json')) {
        const doc = JSON.parse(Buffer.concat(chunks).toString('utf8')) as {
          resourceSpans?: Array<{ resource?: { attributes?: Array<{ key: string, value: AnyValue }> }, scopeSpans?: Array<{ spans?: Array<Record<string, unknown>> }> }>
        }
        for (const rs of doc.resourceSpans ?? []) {
          const service = String(attrs(rs.resource?.attributes)['service.name'])
          for (const ss of rs.scopeSpans ?? []) {
            for (const s of ss.spans ?? []) {
              spans.push({
                service,
                traceId: String(s.traceId),
                spanId: String(s.spanId),
                parentSpanId: String(s.parentSpanId ?? ''),
                name: String(s.name),
                kind: Number(s.kind),
                attributes: attrs(s.attributes as Array<{ key: string, value: AnyValue }>),
                status: (s.status ?? {}) as ReceivedSpan['status']
              })
            }
          }
        }
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}')
      for (const w of [...waiters]) w()
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  return {
    url: `http://127.0.0.1:${port}`,
    spans,
    requests,
    waitFor: (pred, ms = 15_000) => new Promise((resolve, reject) => {
      if (pred(spans)) { resolve(spans); return }
      const timer = setTimeout(() => { waiters.delete(check); reject(new Error(`spans not received within ${ms} ms (${spans.length} so far: ${spans.map((s) => `${s.service} ${s.name}`).join(', ')})`)) }, ms)
      const check = (): void => {
        if (!pred(spans)) return
        clearTimeout(timer)
        waiters.delete(check)
        resolve(spans)
      }
      waiters.add(check)
    }),
    close: () => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()) })
  }
}
