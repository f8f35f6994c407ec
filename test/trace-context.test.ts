import crypto from 'node:crypto'
import { syncBuiltinESMExports } from 'node:module'
import fc from 'fast-check'
import t from 'tap'
import {
  TRACE_FLAG_SAMPLED, formatTraceparent, newSpanId, newTraceId, parseTraceparent, validTracestate
} from '@portcullis/core'

// The W3C Trace Context helpers of @portcullis/core (https://www.w3.org/TR/trace-context/):
// parsing and formatting `traceparent`, the `tracestate` filter and the random ids.

const TRACE = '4bf92f3577b34da6a3ce929d0e0e4736'
const PARENT = '00f067aa0ba902b7'
const VALID = `00-${TRACE}-${PARENT}-01`

t.test('parseTraceparent: a valid version-00 header', async (t) => {
  t.same(parseTraceparent(VALID), { traceId: TRACE, parentId: PARENT, flags: 1 }, 'trace id, parent id and flags read')
  t.equal(VALID.length, 55, 'the fixture is the 55 characters of version 00')
  t.same(parseTraceparent(`00-${TRACE}-${PARENT}-00`), { traceId: TRACE, parentId: PARENT, flags: 0 }, 'flags 00: not sampled')
  t.equal(parseTraceparent(`00-${TRACE}-${PARENT}-ff`)?.flags, 255, 'flags ff read as 255')
  t.equal(parseTraceparent(`00-${TRACE}-${PARENT}-09`)?.flags, 9, 'flags 09 read as 9 (bits beyond sampled kept)')
  t.equal((parseTraceparent(`00-${TRACE}-${PARENT}-03`)?.flags ?? 0) & TRACE_FLAG_SAMPLED, TRACE_FLAG_SAMPLED, 'the sampled bit of 03 is set')
  t.equal((parseTraceparent(`00-${TRACE}-${PARENT}-02`)?.flags ?? 1) & TRACE_FLAG_SAMPLED, 0, 'the sampled bit of 02 is clear')
})

t.test('parseTraceparent: upper-case hex is refused', async (t) => {
  t.equal(parseTraceparent(`00-${TRACE.toUpperCase()}-${PARENT}-01`), undefined, 'upper-case trace id')
  t.equal(parseTraceparent(`00-${TRACE}-00F067AA0BA902B7-01`), undefined, 'upper-case parent id')
  t.equal(parseTraceparent(`00-${TRACE}-${PARENT}-0A`), undefined, 'upper-case flags')
  t.equal(parseTraceparent(`0A-${TRACE}-${PARENT}-01`), undefined, 'upper-case version')
})

t.test('parseTraceparent: all-zero ids are refused', async (t) => {
  t.equal(parseTraceparent(`00-${'0'.repeat(32)}-${PARENT}-01`), undefined, 'all-zero trace id')
  t.equal(parseTraceparent(`00-${TRACE}-${'0'.repeat(16)}-01`), undefined, 'all-zero parent id')
  t.ok(parseTraceparent(`00-${'0'.repeat(31)}1-${'0'.repeat(15)}1-01`), 'ids with a single non-zero digit are valid')
})

t.test('parseTraceparent: versions', async (t) => {
  t.equal(parseTraceparent(`ff-${TRACE}-${PARENT}-01`), undefined, 'version ff is invalid')
  t.equal(parseTraceparent(`${VALID}-extra`), undefined, 'version 00 with more fields')
  t.equal(parseTraceparent(`${VALID}0`), undefined, 'version 00 one character too long')
  t.equal(parseTraceparent(`${VALID} `), undefined, 'version 00 with a trailing space')
  t.same(parseTraceparent(`01-${TRACE}-${PARENT}-01-what-the-future-holds`), { traceId: TRACE, parentId: PARENT, flags: 1 }, 'a higher version with more fields after a dash is read by the version-00 layout')
  t.same(parseTraceparent(`cc-${TRACE}-${PARENT}-00`), { traceId: TRACE, parentId: PARENT, flags: 0 }, 'a higher version of exactly 55 characters is read')
  t.equal(parseTraceparent(`01-${TRACE}-${PARENT}-01what`), undefined, 'a higher version with more characters but no dash')
  t.equal(parseTraceparent(`zz-${TRACE}-${PARENT}-01`), undefined, 'a version that is not hex')
})

t.test('parseTraceparent: malformed layouts and types', async (t) => {
  t.equal(parseTraceparent(VALID.slice(0, 54)), undefined, 'shorter than 55 characters')
  t.equal(parseTraceparent(`00-${TRACE.slice(1)}-${PARENT}0-01`), undefined, 'a dash out of place (31-digit trace id)')
  t.equal(parseTraceparent(`00_${TRACE}_${PARENT}_01`), undefined, 'another separator than a dash')
  t.equal(parseTraceparent(`00-${TRACE.slice(0, 31)}g-${PARENT}-01`), undefined, 'a non-hex digit in the trace id')
  t.equal(parseTraceparent(`00-${TRACE}-${PARENT.slice(0, 15)}x-01`), undefined, 'a non-hex digit in the parent id')
  t.equal(parseTraceparent(`00-${TRACE}-${PARENT}-0x`), undefined, 'non-hex flags')
  t.equal(parseTraceparent(''), undefined, 'empty string')
  t.equal(parseTraceparent(undefined), undefined, 'undefined')
  t.equal(parseTraceparent(null), undefined, 'null')
  t.equal(parseTraceparent(55), undefined, 'a number')
  t.equal(parseTraceparent([VALID]), undefined, 'an array (a repeated header), even of one valid value')
  t.equal(parseTraceparent([VALID, VALID]), undefined, 'an array of two valid values')
  t.equal(parseTraceparent({ toString: () => VALID }), undefined, 'an object whose string form is valid')
})

const idHex = (bytes: number): fc.Arbitrary<string> =>
  fc.uint8Array({ minLength: bytes, maxLength: bytes })
    .filter((b) => b.some((x) => x !== 0))
    .map((b) => Buffer.from(b).toString('hex'))

t.test('formatTraceparent: parse(format(x)) gives x back for any valid ids and flags', async (t) => {
  let runs = 0
  fc.assert(fc.property(idHex(16), idHex(8), fc.integer({ min: 0, max: 255 }), (traceId, spanId, flags) => {
    runs++
    const header = formatTraceparent({ traceId, spanId, flags })
    if (header.length !== 55 || !header.startsWith('00-')) return false
    const back = parseTraceparent(header)
    return back !== undefined && back.traceId === traceId && back.parentId === spanId && back.flags === flags
  }), { numRuns: 500 })
  t.equal(runs, 500, 'the property held over 500 random ids and flags')
  t.equal(formatTraceparent({ traceId: TRACE, spanId: PARENT, flags: 1 }), VALID, 'the W3C example, byte for byte')
  t.equal(formatTraceparent({ traceId: TRACE, spanId: PARENT, flags: 0 }), `00-${TRACE}-${PARENT}-00`, 'flags 0 as two digits')
  t.equal(formatTraceparent({ traceId: TRACE, spanId: PARENT, flags: 0xab }), `00-${TRACE}-${PARENT}-ab`, 'flags in lower-case hex')
})

t.test('validTracestate', async (t) => {
  t.equal(validTracestate('rojo=00f067aa0ba902b7,congo=t61rcWkgMzE'), 'rojo=00f067aa0ba902b7,congo=t61rcWkgMzE', 'a W3C example kept unchanged')
  const printable = Array.from({ length: 0x7f - 0x20 }, (_, i) => String.fromCharCode(0x20 + i)).join('')
  t.equal(validTracestate(printable), printable, 'every printable ASCII character kept')
  for (const c of ['\x00', '\x01', '\n', '\r', '\x1f', '\x7f']) {
    t.equal(validTracestate(`a=b${c}c=d`), undefined, `control character U+${c.charCodeAt(0).toString(16).padStart(4, '0')} refused`)
  }
  t.equal(validTracestate('a=é'), undefined, 'non-ASCII refused')
  t.equal(validTracestate(['a=1', 'b=2']), 'a=1,b=2', 'a repeated header joined with a comma')
  t.equal(validTracestate(['a=1', 'b=\n2']), undefined, 'a repeated header with a control character refused')
  t.equal(validTracestate(''), undefined, 'empty refused')
  t.equal(validTracestate('x'.repeat(8192)), 'x'.repeat(8192), '8,192 characters kept')
  t.equal(validTracestate('x'.repeat(8193)), undefined, '8,193 characters refused')
  t.equal(validTracestate(undefined), undefined, 'undefined')
  t.equal(validTracestate(42), undefined, 'a number')
})

t.test('newTraceId and newSpanId: lower-case hex of the right length, never all zero, distinct', async (t) => {
  const N = 10_000
  const traces = Array.from({ length: N }, () => newTraceId())
  const spans = Array.from({ length: N }, () => newSpanId())
  t.ok(traces.every((id) => /^[0-9a-f]{32}$/.test(id)), 'every trace id is 32 lower-case hex digits')
  t.ok(spans.every((id) => /^[0-9a-f]{16}$/.test(id)), 'every span id is 16 lower-case hex digits')
  t.ok(traces.every((id) => /[1-9a-f]/.test(id)), 'no all-zero trace id')
  t.ok(spans.every((id) => /[1-9a-f]/.test(id)), 'no all-zero span id')
  t.equal(new Set(traces).size, N, `${N} distinct trace ids`)
  t.equal(new Set(spans).size, N, `${N} distinct span ids`)
  t.ok(traces.every((id) => parseTraceparent(formatTraceparent({ traceId: id, spanId: spans[0]!, flags: 1 })) !== undefined), 'every trace id makes a valid traceparent')
})

t.test('newTraceId and newSpanId skip random bytes that are all zero', async (t) => {
  // Node's crypto.randomFillSync replaced (and the ESM binding of node:crypto synced) by one that
  // zeroes the first 32 bytes of each refill: the first ids drawn from a refilled pool would be zero.
  const real = crypto.randomFillSync
  let refills = 0
  const zeroing = ((buf: NodeJS.ArrayBufferView) => {
    refills++
    real(buf)
    new Uint8Array(buf.buffer, buf.byteOffset, Math.min(32, buf.byteLength)).fill(0)
    return buf
  }) as typeof crypto.randomFillSync
  ;(crypto as { randomFillSync: typeof crypto.randomFillSync }).randomFillSync = zeroing
  syncBuiltinESMExports()
  t.teardown(() => {
    ;(crypto as { randomFillSync: typeof crypto.randomFillSync }).randomFillSync = real
    syncBuiltinESMExports()
  })
  // more ids than one pool holds: at least one refill happens while drawing
  const traces = Array.from({ length: 600 }, () => newTraceId())
  t.ok(refills >= 2, `the pool was refilled (${refills} times) while drawing trace ids`)
  t.notOk(traces.includes('0'.repeat(32)), 'no all-zero trace id although refills began with 32 zero bytes')
  const before = refills
  const spans = Array.from({ length: 1200 }, () => newSpanId())
  t.ok(refills > before, 'the pool was refilled while drawing span ids')
  t.notOk(spans.includes('0'.repeat(16)), 'no all-zero span id although refills began with 32 zero bytes')
})
