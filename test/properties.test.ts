import fc from 'fast-check'
import Fastify from 'fastify'
import t from 'tap'
import jwksAuth from '@portcullis/jwks-auth'
import { buildGateway, isAmbiguousPath } from '../gateway/server.js'
import { parseGatewayConfig } from '../gateway/config.js'
import { headerSafe } from '../gateway/headers.js'
import { echoUpstream } from './helpers/upstream.js'
import { b64url, signJwt, startTestIssuer } from './helpers/issuer.js'

// Property-based checks (fast-check): no input makes a 5xx, a crash or an accepted invalid token.
// A short run here; PROPERTY_RUNS raises the number of cases per property (the long runs).
const RUNS = Number(process.env.PROPERTY_RUNS ?? 150)

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

t.test('any string as a bearer token: 401 or 400, never 2xx or 5xx', async (t) => {
  await fc.assert(fc.asyncProperty(fc.string({ maxLength: 600 }), async (s) => {
    const code = await status(`Bearer ${s}`)
    return code === 401 || code === 400
  }), { numRuns: RUNS })
  t.pass(`${RUNS} cases`)
})

t.test('a valid token changed anywhere is refused (one character replaced, inserted or removed)', async (t) => {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.'
  await fc.assert(fc.asyncProperty(
    fc.nat({ max: valid.length - 1 }), fc.constantFrom(...alphabet.split('')), fc.constantFrom('replace', 'insert', 'remove'),
    async (i, c, op) => {
      const changed = op === 'replace' ? valid.slice(0, i) + c + valid.slice(i + 1) : op === 'insert' ? valid.slice(0, i) + c + valid.slice(i) : valid.slice(0, i) + valid.slice(i + 1)
      fc.pre(changed !== valid)
      return await status(`Bearer ${changed}`) === 401
    }), { numRuns: RUNS })
  t.equal(await status(`Bearer ${valid}`), 200, 'the original still passes')
})

t.test('arbitrary headers and claims, correctly signed with the real key: never a 5xx; accepted only when every rule holds', async (t) => {
  const json = fc.jsonValue({ maxDepth: 2 })
  const claimValue = fc.oneof(fc.string(), fc.integer(), fc.double(), fc.boolean(), fc.constant(null), fc.array(fc.string(), { maxLength: 3 }), json)
  await fc.assert(fc.asyncProperty(
    fc.record({ alg: fc.constantFrom('RS256', 'PS256', 'none', 'HS256', 'RS512'), kid: fc.oneof(fc.constant(key.kid), fc.string()), crit: fc.option(fc.array(fc.string(), { maxLength: 2 }), { nil: undefined }) }, { requiredKeys: ['alg', 'kid'] }),
    fc.record({ iss: fc.oneof(fc.constant(issuer.url), fc.string()), aud: fc.oneof(fc.constant('portcullis'), claimValue), sub: claimValue, exp: fc.oneof(fc.constant(Math.floor(Date.now() / 1000) + 600), claimValue), nbf: claimValue, iat: claimValue, permissions: claimValue, role: claimValue }, { requiredKeys: [] }),
    async (header, payload) => {
      const token = signJwt(header, payload, key.privateKey, 'RS256')
      const code = await status(`Bearer ${token}`)
      if (code === 200) {
        // accepted: then every rule held
        return header.alg === 'RS256' && header.kid === key.kid && header.crit === undefined && payload.iss === issuer.url &&
          (payload.aud === 'portcullis' || (Array.isArray(payload.aud) && payload.aud.includes('portcullis'))) &&
          typeof payload.sub === 'string' && payload.sub !== '' && typeof payload.exp === 'number' && payload.exp * 1000 > Date.now()
      }
      return code === 401 || code === 400
    }), { numRuns: RUNS })
  t.pass(`${RUNS} cases`)
})

t.test('headerSafe: any claim becomes printable ASCII without , or % unencoded, and decodes back', async (t) => {
  fc.assert(fc.property(fc.string({ unit: 'grapheme-composite', maxLength: 40 }), (s) => {
    const out = headerSafe(s)
    if (!/^[\x20-\x7e]*$/.test(out) || out.includes(',')) return false
    return decodeURIComponent(out) === s
  }), { numRuns: RUNS * 4 })
  t.pass()
})

t.test('gateway paths: any path is never a 5xx, and never reaches the protected upstream without a token', async (t) => {
  const api = await echoUpstream('api')
  const pub = await echoUpstream('pub')
  const gw = await buildGateway({
    config: parseGatewayConfig({ issuers: [{ issuer: issuer.url, audience: 'portcullis' }], routes: [{ prefix: '/api', upstream: api.url }, { prefix: '/pub', upstream: pub.url, auth: false }] }, 'test'),
    logger: false
  })
  t.teardown(async () => { await gw.close(); await api.close(); await pub.close() })
  await gw.app.ready()
  const segment = fc.oneof(fc.constantFrom('api', 'API', 'pub', '..', '.', '%2e%2e', '%2F', '%5c', '%00', ';', '%61pi', 'x'), fc.string({ maxLength: 6 }))
  await fc.assert(fc.asyncProperty(fc.array(segment, { maxLength: 5 }), fc.option(fc.string({ maxLength: 10 }), { nil: undefined }), async (segs, query) => {
    const url = `/${segs.join('/')}${query === undefined ? '' : `?${query}`}`
    const before = pub.seen.length
    let code: number
    try {
      code = (await gw.app.inject({ url })).statusCode
    } catch {
      return true // not a request line Node would parse: it never reaches the gateway
    }
    if (code >= 500) return false
    // without a token nothing reaches the protected upstream, and the public one gets clean paths only
    return api.seen.length === 0 && pub.seen.slice(before).every((r) => !isAmbiguousPath(r.url))
  }), { numRuns: RUNS * 2 })
  t.pass()
})

t.test('b64url helper round-trips (the properties above build tokens with it)', async (t) => {
  t.equal(Buffer.from(b64url('{"a":1}'), 'base64url').toString(), '{"a":1}')
})
