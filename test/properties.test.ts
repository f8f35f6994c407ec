import fc from 'fast-check'
import Fastify from 'fastify'
import t from 'tap'
import jwksAuth from '@portcullis/jwks-auth'
import { AuthFailure, FAILURE_REASONS } from '@portcullis/core'
import { decodeJws } from '../plugins/jwks-auth/src/verify.js'
import { b64url, signJwt, startTestIssuer } from './helpers/issuer.js'
import { holds, runs } from './helpers/properties.js'

// Property-based checks (fast-check) of the token decoder and verifier: no input makes a 5xx, a
// crash or an accepted invalid token. Path normalisation and route matching:
// properties-paths.test.ts; header hygiene: properties-headers.test.ts; the route file:
// properties-routes.test.ts; the auth service's bodies: properties-auth.test.ts.
// A short run here; PROPERTY_RUNS raises the number of cases per property (the long runs:
// drills/09-properties.drill.ts runs 100,000).

const issuer = await startTestIssuer()
t.teardown(() => issuer.close())
const app = Fastify()
await app.register(jwksAuth, { issuers: [{ issuer: issuer.url, audience: 'portcullis' }] })
app.get('/me', async (req) => ({ sub: req.user!.sub }))
await app.ready()
t.teardown(() => app.close())
await app.jwksAuth.refresh()
const valid = issuer.sign({ sub: 'prop-user' })
const key = issuer.published[0]!

const status = async (authorization: string): Promise<number> => {
  try {
    return (await app.inject({ url: '/me', headers: { authorization } })).statusCode
  } catch {
    return 400 // a header value Node itself refuses to carry: never reached the plugin
  }
}

/** How the verifier (what the request hook runs, without the HTTP layer) answers a token: 'accepted', a failure reason, or what else it threw. */
async function verdict (token: string): Promise<string> {
  try {
    await app.jwksAuth.verify(token)
    return 'accepted'
  } catch (err) {
    if (err instanceof AuthFailure && (FAILURE_REASONS as readonly string[]).includes(err.reason)) return err.reason
    return `threw ${err instanceof Error ? `${err.name}: ${err.message}` : String(err)}`
  }
}

const B64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'
const b64Chars = (max: number): fc.Arbitrary<string> => fc.string({ unit: fc.constantFrom(...B64URL.split('')), maxLength: max })
const [validHeader, validPayload, validSignature] = valid.split('.') as [string, string, string]
/** A JSON object or any JSON value, base64url-encoded as a token segment. */
const jsonSegment = fc.oneof(fc.jsonValue({ maxDepth: 2 }), fc.dictionary(fc.constantFrom('alg', 'kid', 'typ', 'crit', 'iss', 'aud', 'sub', 'exp', 'nbf', 'iat', 'x'), fc.jsonValue({ maxDepth: 1 }), { maxKeys: 5 }))
  .map((v) => b64url(JSON.stringify(v)))
/** Token-shaped strings: segments of JSON, random base64url, the valid token's own segments, in any number and with any separators. */
const tokenish = fc.oneof(
  fc.string({ maxLength: 300 }),
  fc.tuple(fc.oneof(jsonSegment, b64Chars(60), fc.constant(validHeader)), fc.oneof(jsonSegment, b64Chars(60), fc.constant(validPayload)), fc.oneof(b64Chars(400), fc.constant(validSignature), fc.constant('')))
    .map((s) => s.join('.')),
  fc.array(fc.oneof(jsonSegment, b64Chars(20), fc.constantFrom(validHeader, validPayload, validSignature, '', '=', ' ', '+/')), { maxLength: 5 }).chain((segs) =>
    fc.constantFrom('.', '..', ' ', '').map((sep) => segs.join(sep)))
)

t.test('the decoder: any string either decodes to a JSON-object header and payload or is refused as malformed, never another error', async (t) => {
  await holds(t, fc.property(tokenish, (s) => {
    let decoded: ReturnType<typeof decodeJws>
    try {
      decoded = decodeJws(s)
    } catch (err) {
      if (err instanceof AuthFailure && err.reason === 'malformed') return
      throw err
    }
    const isObject = (v: unknown): boolean => v !== null && typeof v === 'object' && !Array.isArray(v)
    if (!isObject(decoded.header) || !isObject(decoded.payload)) throw new Error(`decoded to ${JSON.stringify(decoded)}`)
    if (`${decoded.input}.${decoded.signature}` !== s) throw new Error('input and signature are not the token')
  }), runs())
})

t.test('the verifier: any token-shaped string is refused with a known reason, never accepted, never another error', async (t) => {
  await holds(t, fc.asyncProperty(tokenish, async (s) => {
    fc.pre(s !== valid)
    const v = await verdict(s)
    if (v === 'accepted' || v.startsWith('threw')) throw new Error(v)
  }), runs(), { timeout: 10_000 })
})

t.test('a valid token changed anywhere is refused (one to three characters replaced, inserted, removed, or two swapped; the verified-token cache holds the original)', async (t) => {
  t.equal(await verdict(valid), 'accepted', 'the original passes (and is cached)')
  const edit = fc.tuple(fc.constantFrom('replace', 'insert', 'remove', 'swap'), fc.nat(), fc.constantFrom(...`${B64URL}.=+/ `.split('')))
  await holds(t, fc.asyncProperty(fc.array(edit, { minLength: 1, maxLength: 3 }), async (edits) => {
    let s = valid
    for (const [op, at, c] of edits) {
      const i = at % (s.length + (op === 'insert' ? 1 : 0))
      if (op === 'replace') s = s.slice(0, i) + c + s.slice(i + 1)
      else if (op === 'insert') s = s.slice(0, i) + c + s.slice(i)
      else if (op === 'remove') s = s.slice(0, i) + s.slice(i + 1)
      else { const j = (i + 1) % s.length; const a = [...s]; [a[i], a[j]] = [a[j]!, a[i]!]; s = a.join('') }
    }
    fc.pre(s !== valid)
    const v = await verdict(s)
    if (v === 'accepted' || v.startsWith('threw')) throw new Error(`${v} for ${s}`)
  }), runs(), { timeout: 10_000 })
  t.equal(await verdict(valid), 'accepted', 'the original still passes')
})

// through the HTTP layer (Authorization header parsing, the hook, the 401)
t.test('any Authorization header value: 401 or 400, never 2xx or 5xx', async (t) => {
  const header = fc.oneof(
    fc.string({ maxLength: 600 }).map((s) => `Bearer ${s}`),
    fc.tuple(fc.constantFrom('Bearer', 'bearer', 'BEARER', 'Bearer ', 'Basic', 'Token', ''), fc.constantFrom(' ', '  ', '\t', ''), tokenish).map(([scheme, sep, tok]) => `${scheme}${sep}${tok}`),
    fc.string({ maxLength: 100 })
  )
  await holds(t, fc.asyncProperty(header, async (h) => {
    const code = await status(h)
    // the valid token itself, under any spelling of the scheme and spacing RFC 6750/9110 allow
    const m = /^bearer +([^ ]+) *$/i.exec(h)
    if (m !== null && m[1] === valid) {
      if (code !== 200) throw new Error(`${code} for the valid token as ${JSON.stringify(h)}`)
      return
    }
    if (code !== 401 && code !== 400) throw new Error(`${code} for ${JSON.stringify(h)}`)
  }), runs(), { timeout: 10_000 })
})

// one RSA signature per case (~0.5 ms): the long run's 100,000 cases take ~50 s of CPU
t.test('arbitrary headers and claims, correctly signed with the real key: never a 5xx; accepted only when every rule holds', async (t) => {
  const json = fc.jsonValue({ maxDepth: 2 })
  const claimValue = fc.oneof(fc.string(), fc.integer(), fc.double(), fc.boolean(), fc.constant(null), fc.array(fc.string(), { maxLength: 3 }), json)
  const nowS = Math.floor(Date.now() / 1000)
  const time = fc.integer({ min: nowS - 3600, max: nowS + 3600 })
  // A valid token with none, one or two of its fields replaced by anything (absent, any JSON value,
  // any time): a third of the cases are untouched, so the acceptance rule below is exercised too.
  const good = {
    alg: fc.constant('RS256'),
    kid: fc.constant(key.kid),
    iss: fc.constant(issuer.url),
    aud: fc.constantFrom('portcullis', ['other', 'portcullis']),
    sub: fc.string({ minLength: 1, maxLength: 8 }),
    exp: fc.integer({ min: nowS + 120, max: nowS + 3600 }),
    nbf: fc.option(fc.integer({ min: nowS - 3600, max: nowS }), { nil: undefined }),
    iat: fc.option(fc.integer({ min: nowS - 3600, max: nowS }), { nil: undefined }),
    permissions: fc.option(fc.array(fc.string(), { maxLength: 3 }), { nil: undefined }),
    role: fc.option(fc.string(), { nil: undefined })
  }
  const other: Record<string, fc.Arbitrary<unknown>> = {
    alg: fc.oneof(fc.constantFrom('PS256', 'none', 'HS256', 'RS512', 'rs256'), claimValue),
    kid: fc.oneof(fc.string(), claimValue),
    crit: fc.oneof(fc.array(fc.string(), { maxLength: 2 }), claimValue),
    aud: fc.oneof(fc.constantFrom('other', ['other']), claimValue)
  }
  const fields = [...Object.keys(good), 'crit']
  const changed = fc.oneof(fc.constant([] as string[]), fc.subarray(fields, { minLength: 1, maxLength: 2 }))
  const anything = (f: string): fc.Arbitrary<unknown> => fc.oneof(fc.constant(undefined), claimValue, time, other[f] ?? claimValue)
  const token = changed.chain((keys) => fc.record(Object.fromEntries(fields.map((f) => [f, keys.includes(f) ? anything(f) : (good as Record<string, fc.Arbitrary<unknown>>)[f] ?? fc.constant(undefined)])))
    .map((all) => {
      const defined = (o: Record<string, unknown>): Record<string, unknown> => Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined))
      const { alg, kid, crit, ...claims } = all
      return [defined({ alg, kid, crit }), defined(claims), keys.length === 0] as const
    }))
  let accepted = 0
  await holds(t, fc.asyncProperty(
    token,
    async ([header, payload, untouched]) => {
      const token = signJwt(header, payload, key.privateKey, 'RS256')
      const code = await status(`Bearer ${token}`)
      if (untouched && code !== 200) return false
      if (code === 200) {
        accepted++
        // accepted: then every rule held (times within jwks-auth's default 60 s clock tolerance)
        const now = Date.now()
        const notAfterNow = (v: unknown): boolean => v === undefined || (typeof v === 'number' && Number.isFinite(v) && v * 1000 <= now + 60_000)
        const crit = header.crit as unknown
        const strings = (v: unknown): boolean => Array.isArray(v) && v.every((x) => typeof x === 'string')
        return header.alg === 'RS256' && header.kid === key.kid && crit === undefined && payload.iss === issuer.url &&
          (payload.aud === 'portcullis' || (strings(payload.aud) && (payload.aud as string[]).includes('portcullis'))) &&
          typeof payload.sub === 'string' && payload.sub !== '' && typeof payload.exp === 'number' && payload.exp * 1000 + 60_000 >= now &&
          notAfterNow(payload.nbf) && notAfterNow(payload.iat) &&
          (payload.role === undefined || typeof payload.role === 'string') && (payload.permissions === undefined || strings(payload.permissions))
      }
      return code === 401 || code === 400
    }), runs(), { timeout: 10_000 })
  // the rule above is tested only if tokens do get accepted (a third of the cases are valid tokens)
  t.ok(accepted > 0, `${accepted} tokens accepted`)
})

t.test('b64url helper round-trips (the properties above build tokens with it)', async (t) => {
  t.equal(Buffer.from(b64url('{"a":1}'), 'base64url').toString(), '{"a":1}')
})
