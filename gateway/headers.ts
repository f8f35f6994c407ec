import { randomBytes } from 'node:crypto'
import type { IncomingHttpHeaders, IncomingMessage } from 'node:http'
import type { FastifyRequest } from 'fastify'
import { formatTraceparent, isRequestId, traceContextOf } from '@portcullis/core'

/** The span of a request's upstream call, when spans are recorded (its id is the upstream's parent). */
export const kUpstreamSpan = Symbol('portcullis.upstreamSpan')

/** 16 random hex digits per process: ids stay distinct across replicas and restarts. */
const ID_PREFIX = randomBytes(8).toString('hex')
let idCounter = 0

/**
 * Fastify `genReqId`: the caller's well-formed `x-request-id` (REQUEST_ID_PATTERN), else `<process prefix>-<counter>`
 * (base 36). A request id must be unique, not secret: a counter costs nothing, a UUID ~0.3 µs.
 */
export function genRequestId (req: IncomingMessage): string {
  const v = req.headers['x-request-id']
  if (isRequestId(v)) return v
  idCounter = idCounter === Number.MAX_SAFE_INTEGER ? 1 : idCounter + 1
  return `${ID_PREFIX}-${idCounter.toString(36)}`
}

/** Printable ASCII except `%` and `,`: passes headerSafe unchanged. */
const HEADER_SAFE = /^[\x20-\x24\x26-\x2b\x2d-\x7e]*$/

/**
 * Makes a claim value safe for a header line: UTF-8 percent-encoding of everything outside
 * printable ASCII, plus `%` and `,` (the list separator of `x-user-permissions`). Plain ids and
 * role names pass unchanged; CR/LF or non-Latin-1 claims can never make Node throw (a 500) or split
 * a header. Services decode with `decodeURIComponent`.
 */
export function headerSafe (value: string): string {
  if (HEADER_SAFE.test(value)) return value
  let out = ''
  for (const ch of value) {
    const c = ch.codePointAt(0)!
    out += c >= 0x20 && c <= 0x7e && ch !== '%' && ch !== ',' ? ch : encodeURIComponent(ch).replace(/[!'()*]/g, (x) => `%${x.charCodeAt(0).toString(16).toUpperCase()}`)
  }
  return out
}

// Lone surrogates make encodeURIComponent throw: replace them first.
function wellFormed (s: string): string {
  return s.replace(/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g, '\uFFFD')
}

/** Forwarding headers: kept only from a trusted proxy, otherwise rewritten from the socket. */
const FORWARDING = new Set(['forwarded', 'x-real-ip'])
/**
 * Never forwarded, whatever the peer. Hop-by-hop and upgrade headers (RFC 9110 7.6.1; undici refuses
 * some of them, `upgrade`, `keep-alive`, `expect`, which would otherwise be a 500), and the
 * method-override headers that ask a framework to treat the request as another method.
 */
const DROPPED = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding',
  'upgrade', 'http2-settings', 'expect', 'proxy-authorization',
  'x-http-method-override', 'x-http-method', 'x-method-override'])

export interface VerifiedIdentity { sub: string, role?: string, permissions?: string[] }

/** A claim value as a header value: plain printable ASCII as it is (the common case, one regex test), else encoded. */
function claimHeader (value: string): string {
  return HEADER_SAFE.test(value) ? value : headerSafe(wellFormed(value))
}

/**
 * The headers an upstream receives. Runs after reply-from has removed `Connection` and every header
 * it names, so the headers set here cannot be dropped by a client listing them in `Connection`.
 */
export function upstreamHeaders (request: FastifyRequest, headers: IncomingHttpHeaders, user: VerifiedIdentity | null | undefined): IncomingHttpHeaders {
  const out: IncomingHttpHeaders = {}
  // A peer is trusted when Fastify walked the X-Forwarded-For chain past the socket address.
  const trusted = request.ips !== undefined && request.ips.length > 1
  for (const name of Object.keys(headers)) {
    if (DROPPED.has(name)) continue
    // identity headers the gateway owns: a client's copies are always removed
    if (name.startsWith('x-user-') || name.startsWith('x-portcullis-')) continue
    if (!trusted && (FORWARDING.has(name) || name.startsWith('x-forwarded-'))) continue
    out[name] = headers[name]
  }
  const socketIp = request.socket.remoteAddress ?? ''
  const xff = trusted ? request.headers['x-forwarded-for'] : undefined
  out['x-forwarded-for'] = typeof xff === 'string' && xff !== '' ? `${xff}, ${socketIp}` : socketIp
  out['x-real-ip'] = request.ip
  if (!trusted || out['x-forwarded-proto'] === undefined) out['x-forwarded-proto'] = request.protocol
  if (!trusted || out['x-forwarded-host'] === undefined) {
    const host = request.headers.host
    if (host !== undefined) out['x-forwarded-host'] = host
  }
  out['x-request-id'] = request.id
  // The trace context the gateway continues (tracing registered): the upstream's parent is the
  // gateway's span of the call, or of the request; the caller's own headers are replaced. Without
  // it, the caller's headers pass as they are.
  const tc = traceContextOf(request.raw)
  if (tc !== undefined) {
    const child = request[kUpstreamSpan]
    out.traceparent = child !== undefined ? child.traceparent : formatTraceparent(tc)
    // (no `delete` on the common path: it would turn the object into a slow dictionary)
    if (tc.tracestate !== undefined) out.tracestate = tc.tracestate
    else if (out.tracestate !== undefined) delete out.tracestate
  }
  const auth = request.headers.authorization
  if (auth !== undefined) out.authorization = auth
  if (user !== null && user !== undefined) {
    // Computed per request: a memo per user object (a WeakMap entry) cost more in garbage
    // collection on cache misses than it saved on hits (docs/performance.md).
    out['x-user-id'] = claimHeader(String(user.sub))
    if (typeof user.role === 'string') out['x-user-role'] = claimHeader(user.role)
    if (Array.isArray(user.permissions)) out['x-user-permissions'] = user.permissions.map((p) => claimHeader(String(p))).join(',')
  }
  return out
}

/**
 * Hop-by-hop headers of an upstream response (RFC 9110 7.6.1, RFC 9112 9.6): they describe the
 * gateway's connection to the upstream, never the client's. Dropped with every header the upstream
 * names in its `Connection`, so the client's own connection is governed by its own request (a
 * `Connection: close` from the client is honoured) and Node's defaults.
 */
const HOP_BY_HOP_RESPONSE = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'te', 'trailer', 'upgrade', 'http2-settings'])

/** The headers the client receives from an upstream response. */
export function downstreamHeaders (headers: IncomingHttpHeaders): IncomingHttpHeaders {
  const named = typeof headers.connection === 'string' ? headers.connection.toLowerCase() : ''
  // the usual values name no other header: no set to build on every response
  const extra = named !== '' && named !== 'keep-alive' && named !== 'close'
    ? new Set(named.split(',').map((n) => n.trim()))
    : undefined
  const out: IncomingHttpHeaders = {}
  for (const name of Object.keys(headers)) {
    if (HOP_BY_HOP_RESPONSE.has(name) || extra?.has(name) === true) continue
    out[name] = headers[name]
  }
  return out
}
