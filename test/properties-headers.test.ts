import { validateHeaderValue, type IncomingHttpHeaders } from 'node:http'
import fc from 'fast-check'
import type { FastifyRequest } from 'fastify'
import t from 'tap'
import { Client } from 'undici'
import { downstreamHeaders, headerSafe, upstreamHeaders, type VerifiedIdentity } from '../gateway/headers.js'
import { formatTraceparent, kTraceContext, type TraceContext } from '@portcullis/core'
import { parseGatewayConfig } from '../gateway/config.js'
import { buildGateway } from '../gateway/server.js'
import { echoUpstream } from './helpers/upstream.js'
import { startTestIssuer } from './helpers/issuer.js'
import { holds, runs } from './helpers/properties.js'

// Property-based checks of header hygiene (gateway/headers.ts): what an upstream receives from any
// client and any verified identity, what a client receives from any upstream. A short run here;
// PROPERTY_RUNS raises the cases per property (drills/09-properties.drill.ts runs 100,000).

/** Request headers an upstream must never get from a client (hop-by-hop, upgrade, method overrides). */
const DROPPED = ['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'http2-settings', 'expect', 'proxy-authorization',
  'x-http-method-override', 'x-http-method', 'x-method-override']
/** Hop-by-hop response headers a client must never get from an upstream. */
const HOP_BY_HOP_RESPONSE = ['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'te', 'trailer', 'upgrade', 'http2-settings']
const IDENTITY = ['x-user-id', 'x-user-role', 'x-user-permissions']
const FORWARDING = ['forwarded', 'x-real-ip', 'x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'x-forwarded-port', 'x-forwarded-prefix']

const headerName = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom(...DROPPED, ...IDENTITY, ...FORWARDING, 'x-user-admin', 'x-portcullis-internal', 'x-request-id', 'authorization', 'host', 'cookie', 'accept', 'content-type', 'x-custom', 'traceparent', 'tracestate') },
  { weight: 1, arbitrary: fc.stringMatching(/^[a-z0-9!#$%&'*+.^_`|~-]{1,12}$/) }
)
const headerValue = fc.oneof(fc.string({ maxLength: 30 }), fc.constantFrom('', 'close, x-secret', 'keep-alive', 'h2c', '100-continue', 'admin', '1.2.3.4', 'evil.example'))
/** Claims as a token may carry them: ids, role names, and anything else (commas, %, CR/LF, non-Latin-1, lone surrogates). */
const claim = fc.oneof(fc.stringMatching(/^[a-z0-9:_-]{1,10}$/), fc.string({ unit: 'binary', maxLength: 12 }), fc.constantFrom('a,b', '100%', 'x\r\ny: 1', 'é', '\u4e2d', '\ud800', 'a\udc00b', ' '))
const identity: fc.Arbitrary<VerifiedIdentity | null> = fc.option(fc.record({ sub: claim, role: claim, permissions: fc.array(claim, { maxLength: 4 }) }, { requiredKeys: ['sub'] }), { nil: null })

/** A request as upstreamHeaders reads it: the socket peer, Fastify's trust-proxy result, the id. */
function fakeRequest (headers: IncomingHttpHeaders, trusted: boolean, trace?: TraceContext): FastifyRequest {
  const xff = typeof headers['x-forwarded-for'] === 'string' ? headers['x-forwarded-for'] : ''
  const ips = trusted ? ['10.0.0.9', ...xff.split(',').map((s) => s.trim()).filter((s) => s !== '').reverse(), '10.0.0.8'] : ['10.0.0.9']
  const raw = trace === undefined ? {} : { [kTraceContext]: trace }
  return { headers, raw, ips, ip: ips.at(-1)!, socket: { remoteAddress: '10.0.0.9' }, protocol: 'http', id: 'req-1' } as unknown as FastifyRequest
}

/** The trace context the tracing plugin gave the request (or none: the plugin switched off). */
const traceContext: fc.Arbitrary<TraceContext | undefined> = fc.option(fc.record({
  traceId: fc.stringMatching(/^[0-9a-f]{31}[1-9a-f]$/),
  spanId: fc.stringMatching(/^[0-9a-f]{15}[1-9a-f]$/),
  flags: fc.integer({ min: 0, max: 255 }),
  tracestate: fc.option(fc.constantFrom('vendor=opaque', 'a=1,b=2'), { nil: undefined })
}), { nil: undefined })

/** A header object built the way Node builds one (plain assignment: a `__proto__` header is dropped, as Node drops it). */
function headerObject (raw: Record<string, string>, extra: Record<string, string> = {}): IncomingHttpHeaders {
  const headers: IncomingHttpHeaders = {}
  for (const [name, value] of [...Object.entries(raw), ...Object.entries(extra)]) headers[name] = value
  return headers
}

/** A claim back from its header value, with lone surrogates as U+FFFD (what headerSafe received). */
const wellFormed = (s: string): string => s.replace(/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g, '\uFFFD')

t.test('headerSafe: any claim becomes printable ASCII without , or % unencoded, and decodes back', async (t) => {
  await holds(t, fc.property(fc.string({ unit: 'grapheme-composite', maxLength: 40 }), (s) => {
    const out = headerSafe(s)
    if (!/^[\x20-\x7e]*$/.test(out) || out.includes(',')) throw new Error(`${JSON.stringify(s)} -> ${out}`)
    if (decodeURIComponent(out) !== s) throw new Error(`${out} decodes to ${decodeURIComponent(out)}`)
  }), runs())
})

t.test('upstream headers: hop-by-hop, method overrides and client identity headers never pass; forwarding headers only from a trusted proxy; identity only from the verified token, as valid header values that decode back; everything else unchanged', async (t) => {
  await holds(t, fc.property(fc.dictionary(headerName, headerValue, { maxKeys: 10 }), fc.boolean(), identity, traceContext, (raw, trusted, user, trace) => {
    const headers = headerObject(raw)
    const out = upstreamHeaders(fakeRequest(headers, trusted, trace), headers, user)
    // the gateway's trace context replaces the client's (its span is the upstream's parent)
    if (trace !== undefined) {
      if (out.traceparent !== formatTraceparent(trace)) throw new Error(`traceparent ${String(out.traceparent)} for ${JSON.stringify(trace)}`)
      if (out.tracestate !== trace.tracestate) throw new Error(`tracestate ${String(out.tracestate)}, expected ${String(trace.tracestate)}`)
    }
    for (const name of DROPPED) if (name in out) throw new Error(`${name} passed`)
    for (const name of Object.keys(out)) {
      if ((name.startsWith('x-user-') && (user === null || !IDENTITY.includes(name))) || name.startsWith('x-portcullis-')) throw new Error(`${name} passed`)
    }
    if (out['x-request-id'] !== 'req-1') throw new Error('x-request-id is not the gateway\'s')
    if (headers.authorization !== undefined && out.authorization !== headers.authorization) throw new Error('authorization changed')
    if (!trusted) {
      for (const name of FORWARDING) {
        const own: Record<string, unknown> = { 'x-forwarded-for': '10.0.0.9', 'x-real-ip': '10.0.0.9', 'x-forwarded-proto': 'http', 'x-forwarded-host': headers.host }
        if (out[name] !== own[name]) throw new Error(`${name}: ${String(out[name])} from an untrusted peer`)
      }
    } else {
      const xff = headers['x-forwarded-for']
      if (out['x-forwarded-for'] !== (typeof xff === 'string' && xff !== '' ? `${xff}, 10.0.0.9` : '10.0.0.9')) throw new Error(`x-forwarded-for ${String(out['x-forwarded-for'])}`)
    }
    if (user !== null) {
      const values = IDENTITY.map((n) => out[n]).filter((v) => v !== undefined) as string[]
      for (const v of values) validateHeaderValue('x-user-id', v) // throws on CR/LF or non-Latin-1 (a 500 in Node)
      if (values.some((v) => !/^[\x20-\x7e]*$/.test(v))) throw new Error(`identity header not printable ASCII: ${JSON.stringify(values)}`)
      if (decodeURIComponent(out['x-user-id'] as string) !== wellFormed(user.sub)) throw new Error('x-user-id does not decode to sub')
      if (user.role !== undefined && decodeURIComponent(out['x-user-role'] as string) !== wellFormed(user.role)) throw new Error('x-user-role does not decode to role')
      if (user.permissions !== undefined) {
        const perms = (out['x-user-permissions'] as string).split(',').map((p) => decodeURIComponent(p))
        const expected = user.permissions.map(wellFormed)
        // `[]` and `['']` both render as the empty header
        if (!(expected.length === 0 && perms.join() === '') && JSON.stringify(perms) !== JSON.stringify(expected)) throw new Error(`permissions ${JSON.stringify(perms)}`)
      }
    }
    // every other client header passes unchanged
    for (const [name, value] of Object.entries(headers)) {
      if (DROPPED.includes(name) || name.startsWith('x-user-') || name.startsWith('x-portcullis-') || FORWARDING.includes(name) || name === 'x-request-id' || name === 'authorization') continue
      if (trace !== undefined && (name === 'traceparent' || name === 'tracestate')) continue
      if (out[name] !== value) throw new Error(`${name} changed: ${JSON.stringify(value)} -> ${JSON.stringify(out[name])}`)
    }
  }), runs())
})

/** A Connection header listing names, in any case and spacing. */
const connectionValue = fc.array(fc.tuple(fc.oneof(headerName, fc.constantFrom('close', 'keep-alive', 'Keep-Alive', 'X-Custom', 'COOKIE')), fc.constantFrom('', ' ', '  ')), { maxLength: 4 })
  .map((parts) => parts.map(([n, sp]) => `${sp}${n}${sp}`).join(','))

t.test('downstream headers: hop-by-hop headers and every header the upstream names in Connection never reach the client; everything else unchanged', async (t) => {
  await holds(t, fc.property(fc.dictionary(headerName, headerValue, { maxKeys: 10 }), fc.option(connectionValue, { nil: undefined }), (raw, connection) => {
    const headers = headerObject(raw, connection === undefined ? {} : { connection })
    const out = downstreamHeaders(headers)
    // the Connection header the upstream sent: the one drawn, or a header the dictionary happened to
    // name `connection` (the long run's shrunk counterexample: { "|": "", connection: "|" })
    const sent = typeof headers.connection === 'string' ? headers.connection : ''
    const named = new Set(sent.toLowerCase().split(',').map((n) => n.trim()))
    for (const name of Object.keys(out)) {
      if (HOP_BY_HOP_RESPONSE.includes(name)) throw new Error(`${name} passed`)
      if (named.has(name)) throw new Error(`${name}, named in Connection: ${connection}, passed`)
    }
    for (const [name, value] of Object.entries(headers)) {
      if (!HOP_BY_HOP_RESPONSE.includes(name) && !named.has(name) && out[name] !== value) throw new Error(`${name} changed or dropped`)
    }
  }), runs())
})

t.test('regression (the long run\'s shrunk case): a header an upstream names in its own Connection header never reaches the client, whatever its name', async (t) => {
  t.same(downstreamHeaders({ '|': '', connection: '|' }), {})
  t.same(downstreamHeaders({ '|': 'x', a: 'b', connection: ' | , keep-alive' }), { a: 'b' })
})

// Through the gateway and a real upstream, both ways
t.test('through the gateway: whatever headers a client and an upstream send, the upstream gets the hygienic set and the client no hop-by-hop header; never a 5xx', async (t) => {
  const issuer = await startTestIssuer()
  const up = await echoUpstream('up')
  const gw = await buildGateway({
    config: parseGatewayConfig({
      issuers: [{ issuer: issuer.url, audience: 'portcullis' }],
      rateLimit: false,
      routes: [{ prefix: '/pub', upstream: up.url, auth: false }, { prefix: '/api', upstream: up.url }]
    }, 'test'),
    logger: false
  })
  t.teardown(async () => { await gw.close(); await up.close(); await issuer.close() })
  const address = await gw.app.listen({ port: 0, host: '127.0.0.1' })
  const client = new Client(address)
  t.teardown(() => client.close())
  await gw.app.jwksAuth.refresh()
  // a few tokens with hostile claims, signed once
  const users = [
    { sub: 'plain-user', role: 'admin', permissions: ['orders:read', 'orders:write'] },
    { sub: 'a,b\r\nx-user-role: admin', role: 'é\u4e2d', permissions: ['100%', 'a,b', ''] },
    { sub: '\ud800lone', permissions: [] }
  ]
  const tokens = users.map((u) => issuer.sign(u))

  let respond: Array<[string, string]> = []
  up.handle((req, res) => {
    for (const [name, value] of respond) {
      try { res.setHeader(name, value) } catch { /* a header Node will not send */ }
    }
    res.setHeader('content-type', 'application/json')
    res.end(JSON.stringify(req))
  })
  const responseHeader = fc.tuple(fc.oneof(fc.constantFrom('keep-alive', 'proxy-connection', 'te', 'trailer', 'upgrade', 'http2-settings', 'x-hop', 'x-kept', 'set-cookie'), fc.stringMatching(/^x-[a-z]{1,6}$/)), fc.stringMatching(/^[ -~]{0,12}$/))

  await holds(t, fc.asyncProperty(fc.dictionary(headerName, fc.stringMatching(/^[!-~][ -~]{0,20}$/), { maxKeys: 8 }), fc.option(fc.nat({ max: users.length - 1 }), { nil: undefined }), fc.array(responseHeader, { maxLength: 5 }), fc.boolean(),
    async (raw, who, resHeaders, nameInConnection) => {
      // what the client itself must carry: the request line's host, its own token
      const headers: Record<string, string> = {}
      for (const [name, value] of Object.entries(raw)) if (!['host', 'connection', 'transfer-encoding', 'content-length', 'keep-alive', 'upgrade', 'expect', 'te', 'trailer', 'authorization'].includes(name)) headers[name] = value
      if (who !== undefined) headers.authorization = `Bearer ${tokens[who]!}`
      respond = [...resHeaders, ...(nameInConnection && resHeaders.length > 0 ? [['connection', `keep-alive, ${resHeaders[0]![0]}`] as [string, string]] : [])]
      const before = up.seen.length
      let res
      try {
        res = await client.request({ method: 'GET', path: who === undefined ? '/pub/x' : '/api/x', headers })
      } catch (err) {
        if ((err as { code?: string }).code === 'UND_ERR_INVALID_ARG') return // not a header a client can send
        throw err
      }
      await res.body.dump()
      if (res.statusCode !== 200) throw new Error(`${res.statusCode} for ${JSON.stringify(headers)}`)
      const seen = up.seen.slice(before)
      if (seen.length !== 1) throw new Error(`${seen.length} upstream requests`)
      const got = seen[0]!.headers
      for (const name of [...DROPPED.filter((n) => n !== 'connection'), 'proxy-authorization']) if (name in got) throw new Error(`the upstream got ${name}`)
      if (got.connection !== undefined && got.connection !== 'keep-alive') throw new Error(`the upstream got connection: ${got.connection}`)
      for (const name of Object.keys(got)) if (name.startsWith('x-portcullis-') || (name.startsWith('x-user-') && (who === undefined || !IDENTITY.includes(name)))) throw new Error(`the upstream got ${name}`)
      if (got['x-forwarded-for'] !== '127.0.0.1' || got['x-real-ip'] !== '127.0.0.1' || got.forwarded !== undefined) throw new Error(`forwarding headers from an untrusted client: ${JSON.stringify(got)}`)
      if (who !== undefined && decodeURIComponent(got['x-user-id'] as string) !== wellFormed(users[who]!.sub)) throw new Error(`x-user-id ${String(got['x-user-id'])}`)
      // the client: no hop-by-hop header of the upstream's, none it named in Connection; Node's own keep-alive for the client's connection
      const named = respond.find(([n]) => n === 'connection')?.[1].split(',').map((s) => s.trim().toLowerCase()) ?? []
      for (const [name, value] of respond) {
        const sent = res.headers[name]
        if (['proxy-connection', 'te', 'trailer', 'upgrade', 'http2-settings'].includes(name) || (named.includes(name) && name !== 'keep-alive')) {
          if (sent !== undefined) throw new Error(`the client got ${name}: ${String(sent)}`)
        } else if (name === 'keep-alive') {
          if (sent === value && value !== '') throw new Error(`the client got the upstream's keep-alive: ${value}`)
        }
      }
    }), runs(0.1, 60), { timeout: 10_000 }) // two HTTP hops per case (~1.6 ms): a tenth of the cases in the long run
})
