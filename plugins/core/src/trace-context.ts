import { randomFillSync } from 'node:crypto'

/** W3C Trace Context headers (https://www.w3.org/TR/trace-context/). */
export const TRACEPARENT_HEADER = 'traceparent'
export const TRACESTATE_HEADER = 'tracestate'

/** The `sampled` bit of the trace flags. */
export const TRACE_FLAG_SAMPLED = 0x01

/**
 * The trace a request belongs to, as this process continues it: the trace id (kept from the caller's
 * `traceparent` or new), the id of this process's span for the request (the parent of every call it
 * makes) and the trace flags; `tracestate` is the caller's, passed on unchanged.
 */
export interface TraceContext {
  /** 32 lower-case hex digits, not all zero. */
  readonly traceId: string
  /** 16 lower-case hex digits, not all zero. */
  readonly spanId: string
  /** Trace flags (bit 0: sampled). */
  readonly flags: number
  readonly tracestate: string | undefined
}

/** A parsed `traceparent`: the caller's trace id, its span (our parent) and its flags. */
export interface Traceparent {
  readonly traceId: string
  readonly parentId: string
  readonly flags: number
}

const HEX = /^[0-9a-f]+$/
const ZERO_TRACE = '0'.repeat(32)
const ZERO_SPAN = '0'.repeat(16)

/**
 * Parses a `traceparent` header by the W3C rules: version `00` is exactly
 * `00-<32 hex>-<16 hex>-<2 hex>` in lower case; a higher version (not `ff`) is read by the same
 * layout and may carry more fields after a `-`. All-zero ids, upper-case hex, a repeated header (an
 * array) and anything else malformed give undefined: the request then starts a new trace.
 */
export function parseTraceparent (value: unknown): Traceparent | undefined {
  if (typeof value !== 'string' || value.length < 55) return undefined
  const v = value
  if (v.charCodeAt(2) !== 45 || v.charCodeAt(35) !== 45 || v.charCodeAt(52) !== 45) return undefined // '-'
  const version = v.slice(0, 2)
  if (!HEX.test(version) || version === 'ff') return undefined
  if (version === '00' ? v.length !== 55 : v.length > 55 && v.charCodeAt(55) !== 45) return undefined
  const traceId = v.slice(3, 35)
  const parentId = v.slice(36, 52)
  const flags = v.slice(53, 55)
  if (!HEX.test(traceId) || !HEX.test(parentId) || !HEX.test(flags)) return undefined
  if (traceId === ZERO_TRACE || parentId === ZERO_SPAN) return undefined
  return { traceId, parentId, flags: parseInt(flags, 16) }
}

/** `00-<trace id>-<span id>-<flags>`: the header a call made for this request carries. */
export function formatTraceparent (ctx: Pick<TraceContext, 'traceId' | 'spanId' | 'flags'>): string {
  return `00-${ctx.traceId}-${ctx.spanId}-${(ctx.flags & 0xff).toString(16).padStart(2, '0')}`
}

/** Printable ASCII; W3C's 32 members of at most 256 characters each bound it well below this. */
const TRACESTATE = /^[\x20-\x7e]{1,8192}$/

/**
 * The caller's `tracestate` when it may be passed on: a single printable-ASCII header line of at most
 * 8,192 characters (a repeated header is joined with `,`, as the spec allows); else undefined.
 */
export function validTracestate (value: unknown): string | undefined {
  const v = Array.isArray(value) ? value.join(',') : value
  return typeof v === 'string' && TRACESTATE.test(v) ? v : undefined
}

// Random ids from a pooled buffer turned into hex once per fill: an id is then a slice of that string
// (one randomFillSync and one toString per 170 requests, instead of a toString per id).
const pool = Buffer.alloc(4096)
let poolHex = ''
let offset = 0

function randomHex (bytes: number): string {
  const digits = bytes * 2
  for (;;) {
    if (offset + digits > poolHex.length) {
      randomFillSync(pool)
      poolHex = pool.toString('hex')
      offset = 0
    }
    const hex = poolHex.slice(offset, offset + digits)
    offset += digits
    // all-zero ids are invalid: draw again (1 in 2^64 at worst)
    if (hex !== ZERO_TRACE && hex !== ZERO_SPAN) return hex
  }
}

/** A new random trace id (32 hex digits). */
export function newTraceId (): string {
  return randomHex(16)
}

/** A new random span id (16 hex digits). */
export function newSpanId (): string {
  return randomHex(8)
}

/**
 * Where the tracing plugin keeps a request's TraceContext: a property of the raw request (Node's
 * IncomingMessage), so every plugin reads the same one whatever the order they were registered in.
 */
export const kTraceContext: unique symbol = Symbol.for('portcullis.traceContext')

/** The TraceContext the tracing plugin gave this raw request, or undefined without that plugin. */
export function traceContextOf (raw: object): TraceContext | undefined {
  return (raw as { [kTraceContext]?: TraceContext })[kTraceContext]
}
