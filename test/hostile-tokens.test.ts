import Fastify, { type FastifyInstance } from 'fastify'
import t from 'tap'
import { randomBytes } from 'node:crypto'
import jwksAuth from '@portcullis/jwks-auth'
import { b64url, rsaKey, signJwt, startAttackerServer, startTestIssuer, type TestIssuer } from './helpers/issuer.js'

/**
 * Hostile tokens: every case must get a 401 (never a 5xx), with the expected reason in the log, the
 * attacker's servers must receive no request, and the next valid token must still get a 200.
 */

interface LogLine { event?: string, reason?: string }

async function buildApp (issuer: TestIssuer, lines: LogLine[]): Promise<FastifyInstance> {
  const app = Fastify({
    logger: { level: 'info', stream: { write: (s: string) => { lines.push(JSON.parse(s) as LogLine) } } }
  })
  // a long cooldown: the fetch counts below must not depend on how fast 1,000 requests run
  await app.register(jwksAuth, { issuers: [{ issuer: issuer.url, audience: 'portcullis' }], kidMissCooldown: 30 })
  app.get('/me', async (req) => ({ sub: req.user?.sub }))
  await app.ready()
  await app.jwksAuth.refresh()
  return app
}

t.test('hostile token table', async (t) => {
  const key = rsaKey({ label: 'hostile-main' })
  const weak = rsaKey({ label: 'hostile-weak', bits: 1024 })
  const attackerKey = rsaKey({ label: 'hostile-attacker' })
  const issuer = await startTestIssuer({ keys: [key, weak] })
  const attacker = await startAttackerServer()
  t.teardown(() => issuer.close())
  t.teardown(() => attacker.close())
  const lines: LogLine[] = []
  const app = await buildApp(issuer, lines)
  t.teardown(() => app.close())

  const now = Math.floor(Date.now() / 1000)
  const claims = (over: Record<string, unknown> = {}): Record<string, unknown> => {
    const c: Record<string, unknown> = { iss: issuer.url, aud: 'portcullis', sub: 'mallory', iat: now, nbf: now, exp: now + 600, ...over }
    for (const [k, v] of Object.entries(over)) if (v === undefined) Reflect.deleteProperty(c, k)
    return c
  }
  const hdr = (over: Record<string, unknown> = {}): Record<string, unknown> => ({ alg: 'RS256', typ: 'JWT', kid: key.kid, ...over })
  const good = signJwt(hdr(), claims(), key.privateKey)
  const [gh, gp, gs] = good.split('.') as [string, string, string]
  const spki = key.publicKey.export({ type: 'spki', format: 'pem' }).toString()
  const pkcs1 = key.publicKey.export({ type: 'pkcs1', format: 'pem' }).toString()
  const jwkJson = JSON.stringify(key.jwk)
  const attackerJwk = { ...attackerKey.jwk }

  const cases: Array<[string, string, string]> = []
  const add = (name: string, token: string, reason: string): void => { cases.push([name, token, reason]) }

  for (const none of ['none', 'None', 'NONE', 'nOnE']) {
    add(`alg ${none} without signature`, signJwt(hdr({ alg: none }), claims(), null), 'alg_not_allowed')
    add(`alg ${none} with a signature`, `${b64url(JSON.stringify(hdr({ alg: none })))}.${gp}.${gs}`, 'alg_not_allowed')
  }
  for (const [name, secret] of [['SPKI PEM with newline', spki], ['SPKI PEM without newline', spki.trimEnd()], ['PKCS#1 PEM', pkcs1], ['JWK JSON', jwkJson]] as const) {
    add(`HS256 with the public key (${name}) as secret`, signJwt(hdr({ alg: 'HS256' }), claims(), Buffer.from(secret), 'HS256'), 'alg_not_allowed')
  }
  add('PS256 validly signed while RS256 is pinned', signJwt(hdr({ alg: 'PS256' }), claims(), key.privateKey, 'PS256'), 'alg_not_allowed')
  add('RS512 validly signed while RS256 is pinned', signJwt(hdr({ alg: 'RS512' }), claims(), key.privateKey, 'RS512'), 'alg_not_allowed')
  add('stripped signature', `${gh}.${gp}.`, 'bad_signature')
  add('truncated signature', `${gh}.${gp}.${gs.slice(0, -12)}`, 'bad_signature')
  add('zeroed signature', `${gh}.${gp}.${'A'.repeat(gs.length)}`, 'bad_signature')
  // 256 bytes take 342 base64url characters whose last one carries 4 unused bits: 15 other spellings decode alike.
  const B64U = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'
  add('signature re-spelt with non-zero unused bits (same bytes)', `${gh}.${gp}.${gs.slice(0, -1)}${B64U[B64U.indexOf(gs.at(-1)!) ^ 1]!}`, 'bad_signature')
  add('signature of another (cached) token', `${gh}.${b64url(JSON.stringify(claims({ sub: 'root' })))}.${gs}`, 'bad_signature')
  add('another header with a cached token\'s signature', `${b64url(JSON.stringify(hdr({ typ: 'at+jwt' })))}.${gp}.${gs}`, 'bad_signature')
  add('same kid signed by another key', signJwt(hdr(), claims(), attackerKey.privateKey), 'bad_signature')
  add('a 1024-bit key published in the JWKS', signJwt(hdr({ kid: weak.kid }), claims(), weak.privateKey), 'unknown_kid')
  add('embedded jwk header (attacker key)', signJwt(hdr({ kid: attackerKey.kid, jwk: attackerJwk }), claims(), attackerKey.privateKey), 'unknown_kid')
  add('embedded jwk header with the real kid', signJwt(hdr({ jwk: { ...attackerJwk, kid: key.kid } }), claims(), attackerKey.privateKey), 'bad_signature')
  add('jku naming the attacker', signJwt(hdr({ kid: attackerKey.kid, jku: `${attacker.url}/jwks.json` }), claims(), attackerKey.privateKey), 'unknown_kid')
  add('x5u naming the attacker', signJwt(hdr({ kid: attackerKey.kid, x5u: `${attacker.url}/cert.pem` }), claims(), attackerKey.privateKey), 'unknown_kid')
  add('x5c with an attacker certificate', signJwt(hdr({ x5c: [randomBytes(600).toString('base64')] }), claims(), attackerKey.privateKey), 'bad_signature')
  add('iss pointing at the attacker JWKS', signJwt(hdr({ kid: attackerKey.kid }), claims({ iss: attacker.url }), attackerKey.privateKey), 'bad_issuer')
  for (const kid of ['../../../etc/passwd', "' OR '1'='1' --", '__proto__', 'constructor', 'toString', 'hasOwnProperty']) {
    add(`kid ${JSON.stringify(kid)}`, signJwt(hdr({ kid }), claims(), key.privateKey), 'unknown_kid')
  }
  for (const kid of [42, null, true, {}, [key.kid], 'x'.repeat(10 * 1024)]) {
    add(`kid ${typeof kid === 'string' ? '10 KB long' : JSON.stringify(kid)}`, signJwt(hdr({ kid }), claims(), key.privateKey), 'malformed')
  }
  add('kid missing', signJwt(hdr({ kid: undefined }), claims(), key.privateKey).replace(/^[^.]+/, b64url(JSON.stringify({ alg: 'RS256', typ: 'JWT' }))), 'malformed')
  add('crit with an unknown extension', signJwt(hdr({ crit: ['exp'], exp: 1 }), claims(), key.privateKey), 'malformed')
  add('crit b64', signJwt(hdr({ crit: ['b64'], b64: false }), claims(), key.privateKey), 'malformed')
  add('2 segments', `${gh}.${gp}`, 'malformed')
  add('4 segments', `${gh}.${gp}.${gs}.${gs}`, 'malformed')
  add('5 segments (JWE shape)', `${gh}.${gp}.${gs}.${gs}.${gs}`, 'malformed')
  add('1 segment', gh, 'malformed')
  add('empty segments', '..', 'malformed')
  add('padding in a segment', `${gh}=.${gp}.${gs}`, 'malformed')
  add('header not JSON', signJwt('bm90IGpzb24', claims(), key.privateKey), 'malformed')
  add('header a JSON array', signJwt(b64url('["RS256"]'), claims(), key.privateKey), 'malformed')
  add('header without alg', signJwt({ typ: 'JWT', kid: key.kid }, claims(), key.privateKey), 'malformed')
  for (const [name, body] of [['an array', '[1,2]'], ['a string', '"admin"'], ['a number', '42'], ['null', 'null'], ['true', 'true'], ['not JSON', '{"sub":'], ['empty', '']] as const) {
    add(`payload ${name}`, signJwt(hdr(), b64url(body), key.privateKey), 'malformed')
  }
  add('exp as a string', signJwt(hdr(), claims({ exp: String(now + 600) }), key.privateKey), 'invalid_claims')
  add('exp null', signJwt(hdr(), claims({ exp: null }), key.privateKey), 'invalid_claims')
  add('exp missing', signJwt(hdr(), claims({ exp: undefined }), key.privateKey), 'invalid_claims')
  add('exp in the past', signJwt(hdr(), claims({ exp: now - 3600, iat: now - 4000, nbf: now - 4000 }), key.privateKey), 'expired')
  add('nbf as a string', signJwt(hdr(), claims({ nbf: String(now) }), key.privateKey), 'invalid_claims')
  add('nbf null', signJwt(hdr(), claims({ nbf: null }), key.privateKey), 'invalid_claims')
  add('nbf in the future', signJwt(hdr(), claims({ nbf: now + 3600, exp: now + 7200 }), key.privateKey), 'not_yet_valid')
  add('iat as a string', signJwt(hdr(), claims({ iat: String(now) }), key.privateKey), 'invalid_claims')
  add('iat null', signJwt(hdr(), claims({ iat: null }), key.privateKey), 'invalid_claims')
  add('iat in the future', signJwt(hdr(), claims({ iat: now + 3600 }), key.privateKey), 'not_yet_valid')
  add('aud missing', signJwt(hdr(), claims({ aud: undefined }), key.privateKey), 'bad_audience')
  add('aud an array without ours', signJwt(hdr(), claims({ aud: ['other', 'another'] }), key.privateKey), 'bad_audience')
  add('aud empty array', signJwt(hdr(), claims({ aud: [] }), key.privateKey), 'bad_audience')
  add('aud prefix variant', signJwt(hdr(), claims({ aud: 'portcullis-admin' }), key.privateKey), 'bad_audience')
  add('aud suffix variant', signJwt(hdr(), claims({ aud: 'notportcullis' }), key.privateKey), 'bad_audience')
  add('aud case variant', signJwt(hdr(), claims({ aud: 'Portcullis' }), key.privateKey), 'bad_audience')
  add('aud a number', signJwt(hdr(), claims({ aud: 1 }), key.privateKey), 'bad_audience')
  add('aud array with a non-string', signJwt(hdr(), claims({ aud: ['portcullis', 1] }), key.privateKey), 'bad_audience')
  add('iss missing', signJwt(hdr(), claims({ iss: undefined }), key.privateKey), 'bad_issuer')
  add('iss an array', signJwt(hdr(), claims({ iss: [issuer.url] }), key.privateKey), 'bad_issuer')
  add('iss with a trailing slash', signJwt(hdr(), claims({ iss: `${issuer.url}/` }), key.privateKey), 'bad_issuer')
  add('iss prefix of ours', signJwt(hdr(), claims({ iss: issuer.url.slice(0, -1) }), key.privateKey), 'bad_issuer')
  add('iss with a suffix', signJwt(hdr(), claims({ iss: `${issuer.url}.evil.example` }), key.privateKey), 'bad_issuer')
  add('sub missing', signJwt(hdr(), claims({ sub: undefined }), key.privateKey), 'invalid_claims')
  add('permissions not an array', signJwt(hdr(), claims({ permissions: 'orders:read' }), key.privateKey), 'invalid_claims')
  add('role not a string', signJwt(hdr(), claims({ role: ['admin'] }), key.privateKey), 'invalid_claims')
  add('payload with __proto__', signJwt(hdr(), b64url(`{"__proto__":{"role":"admin"},"iss":${JSON.stringify(issuer.url)},"aud":"portcullis","exp":${now + 600}}`), key.privateKey), 'invalid_claims')

  const headerCases: Array<[string, string, string]> = [
    ['Basic scheme', `Basic ${Buffer.from('a:b').toString('base64')}`, 'malformed'],
    ['Bearer without a token', 'Bearer', 'malformed'],
    ['Bearer glued to the token', `Bearer${good}`, 'malformed'],
    ['two tokens', `Bearer ${good} ${good}`, 'malformed'],
    ['token with a comma', `Bearer ${good},x`, 'malformed'],
    ['9 KB token', `Bearer ${good}${'A'.repeat(9000)}`, 'malformed'],
    ['empty header', '', 'missing']
  ]

  t.ok(cases.length + headerCases.length >= 80, `${cases.length + headerCases.length} cases`)
  // The good token is verified (and cached) first: tokens reusing its signature must not hit that entry.
  t.equal((await app.inject({ url: '/me', headers: { authorization: `Bearer ${good}` } })).statusCode, 200)
  for (const [name, authorization, reason] of [...cases.map(([n, tok, r]) => [n, `Bearer ${tok}`, r] as const), ...headerCases]) {
    const before = lines.length
    const res = await app.inject({ url: '/me', headers: { authorization } })
    t.equal(res.statusCode, 401, `${name}: 401`)
    // an empty header is no credentials at all: a plain challenge (RFC 6750 3.1); anything else is a bad token
    t.equal(res.headers['www-authenticate'], reason === 'missing' ? 'Bearer' : 'Bearer error="invalid_token"', `${name}: WWW-Authenticate`)
    t.equal(res.json().message, 'Missing or invalid bearer token', `${name}: generic body`)
    const failure = lines.slice(before).find((l) => l.event === 'auth_failure')
    t.equal(failure?.reason, reason, `${name}: reason ${reason}`)
  }
  t.equal(attacker.hits, 0, 'the attacker servers received no request')
  t.notOk(issuer.requests.some((r) => !r.url.endsWith('/jwks.json')), 'only the configured JWKS URL was fetched')
  const ok = await app.inject({ url: '/me', headers: { authorization: `Bearer ${good}` } })
  t.equal(ok.statusCode, 200, 'the next valid token passes')
  t.same(ok.json(), { sub: 'mallory' })
})

t.test('regression: a signature must be canonical base64url (no re-spelt last character, no ignored trailing character)', async (t) => {
  // 384 bytes are exactly 512 characters: a 513th is dropped by Buffer's decoder, so it must be refused here.
  const big = rsaKey({ label: 'hostile-3072', bits: 3072 })
  const issuer = await startTestIssuer({ keys: [big] })
  t.teardown(() => issuer.close())
  const lines: LogLine[] = []
  const app = await buildApp(issuer, lines)
  t.teardown(() => app.close())
  const good = issuer.sign({}, { key: big })
  const call = async (token: string): Promise<number> => (await app.inject({ url: '/me', headers: { authorization: `Bearer ${token}` } })).statusCode
  t.equal(await call(good), 200)
  for (const extra of ['A', 'Q', '_']) t.equal(await call(good + extra), 401, `trailing ${extra}: 401`)
  t.ok(lines.filter((l) => l.event === 'auth_failure').every((l) => l.reason === 'bad_signature'), 'reason bad_signature')
  t.equal(await call(good), 200, 'the genuine token still passes')
})

t.test('1,000 random kids concurrently cause at most one JWKS fetch', async (t) => {
  const issuer = await startTestIssuer()
  t.teardown(() => issuer.close())
  const lines: LogLine[] = []
  const app = await buildApp(issuer, lines)
  t.teardown(() => app.close())
  const before = issuer.fetches
  const [, payload, signature] = issuer.sign().split('.')
  const results = await Promise.all(Array.from({ length: 1000 }, () => {
    // The kid is looked up before the signature is checked, so the signature need not match.
    const header = b64url(JSON.stringify({ alg: 'RS256', typ: 'JWT', kid: randomBytes(16).toString('hex') }))
    const token = `${header}.${payload}.${signature}`
    return app.inject({ url: '/me', headers: { authorization: `Bearer ${token}` } })
  }))
  t.ok(results.every((r) => r.statusCode === 401), 'all 401')
  t.equal(issuer.fetches - before, 1, 'exactly one kid-miss fetch for the whole flood')
  const later = await app.inject({ url: '/me', headers: { authorization: `Bearer ${issuer.sign({}, { kid: 'another-random' })}` } })
  t.equal(later.statusCode, 401)
  t.equal(issuer.fetches - before, 1, 'still one: the cooldown holds after the flood')
  t.equal((await app.inject({ url: '/me', headers: { authorization: `Bearer ${issuer.sign()}` } })).statusCode, 200)
})

t.test('expected refusals capture no stack trace (a flood of bad tokens pays for none; none is ever logged)', async (t) => {
  const { AuthFailure, InvalidTokenError, InsufficientScopeError } = await import('@portcullis/core')
  const { RateLimitedError } = await import('@portcullis/rate-limit')
  const { RouteNotFoundError, BadPathError, CircuitOpenError, InternalError } = await import('../gateway/errors.js')
  const frames = (err: Error): number => (err.stack ?? '').split('\n').filter((l) => l.trimStart().startsWith('at ')).length
  for (const err of [new AuthFailure('unknown_kid'), new InvalidTokenError(), new InsufficientScopeError(), new RateLimitedError(3), new RouteNotFoundError(), new BadPathError(), new CircuitOpenError()]) {
    t.equal(frames(err), 0, `${err.constructor.name} ${(err as { code?: string }).code ?? (err as InstanceType<typeof AuthFailure>).reason}: no stack frames`)
  }
  t.ok(frames(new InternalError()) > 0, 'a 500 keeps its stack')
  t.ok(frames(new Error('x')) > 0, 'Error.stackTraceLimit is restored after an AuthFailure')
})
