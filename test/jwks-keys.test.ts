import Fastify from 'fastify'
import t from 'tap'
import { generateKeyPairSync } from 'node:crypto'
import { parseJwk, parseJwks } from '../plugins/jwks-auth/src/keys.js'
import jwksAuth from '@portcullis/jwks-auth'
import { promClient } from '@portcullis/metrics'
import { rsaKey, startTestIssuer } from './helpers/issuer.js'

t.test('parseJwk accepts only RSA signing keys of at least 2048 bits, public members only', async (t) => {
  const k = rsaKey({ label: 'keys-a' })
  const entry = parseJwk(k.jwk)
  if (typeof entry === 'string') throw new Error(entry)
  t.equal(entry.bits, 2048)
  t.equal(entry.sigBytes, 256)
  t.equal(entry.key.type, 'public')
  const priv = k.privateKey.export({ format: 'jwk' })
  const fromPrivate = parseJwk({ ...priv, kid: 'p' })
  t.equal(typeof fromPrivate === 'string' ? fromPrivate : fromPrivate.key.type, 'public', 'a JWK carrying d still becomes a public key')
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ format: 'jwk' })
  t.equal(parseJwk({ ...ec, kid: 'e' }), 'not_rsa')
  t.equal(parseJwk({ ...k.jwk, use: 'enc' }), 'not_sig')
  t.equal(parseJwk({ ...k.jwk, key_ops: ['encrypt'] }), 'not_sig')
  t.equal(parseJwk({ ...k.jwk, alg: 'HS256' }), 'bad_alg')
  t.equal(parseJwk({ ...k.jwk, kid: 7 }), 'no_kid')
  t.equal(parseJwk({ ...k.jwk, n: 'not base64url!' }), 'bad_material')
  t.equal(parseJwk({ ...k.jwk, n: 'AQAB' }), 'too_short')
  t.equal(parseJwk(rsaKey({ label: 'keys-weak', bits: 1024 }).jwk), 'too_short')
  t.equal(parseJwk([k.jwk]), 'not_object')
})

t.test('regression: a JWK whose public exponent is 1 or even is refused (e = 1 makes the signature the message: anyone forges)', async (t) => {
  const k = rsaKey({ label: 'keys-a' })
  t.equal(parseJwk({ ...k.jwk, e: 'AQ' }), 'bad_exponent', 'e = 1')
  t.equal(parseJwk({ ...k.jwk, e: 'AAAB' }), 'bad_exponent', 'e = 1 with leading zero bytes')
  t.equal(parseJwk({ ...k.jwk, e: 'AAAA' }), 'bad_exponent', 'e = 0')
  t.equal(parseJwk({ ...k.jwk, e: 'AQAA' }), 'bad_exponent', 'e even (65536)')
  t.equal(typeof parseJwk({ ...k.jwk, e: 'Aw' }), 'object', 'e = 3 is a valid (if unusual) exponent')
  t.equal(typeof parseJwk(k.jwk), 'object', 'e = 65537')
})

t.test('parseJwks: broken documents are null, duplicate kids are both refused, the count is capped', async (t) => {
  const a = rsaKey({ label: 'keys-a' })
  const b = rsaKey({ label: 'keys-b' })
  t.equal(parseJwks({ keys: 'x' }), null)
  t.equal(parseJwks([a.jwk]), null)
  t.equal(parseJwks(null), null)
  const dup = parseJwks({ keys: [a.jwk, { ...b.jwk, kid: a.kid }, b.jwk] })!
  t.same([...dup.keys.keys()], [b.kid])
  t.same(dup.rejected.map((r) => r.why), ['duplicate_kid'])
  const many = parseJwks({ keys: Array.from({ length: 60 }, (_, i) => ({ ...a.jwk, kid: `k${i}` })) })!
  t.equal(many.keys.size, 50)
  t.equal(many.rejected.length, 10)
  const prev = parseJwks({ keys: [a.jwk] })!.keys
  const again = parseJwks({ keys: [a.jwk, b.jwk] }, prev)!.keys
  t.equal(again.get(a.kid), prev.get(a.kid), 'an unchanged key keeps its entry (and its cached verifications)')
})

t.test('metrics land on the given registry, app.metricsRegistry, or a private one; two apps can share one', async (t) => {
  const issuer = await startTestIssuer()
  t.teardown(() => issuer.close())
  const shared = new promClient.Registry()
  const apps = [Fastify(), Fastify()]
  for (const app of apps) {
    await app.register(jwksAuth, { issuers: [{ issuer: issuer.url, audience: 'portcullis' }], registry: shared })
    app.get('/me', async () => 'ok')
    await app.ready()
    t.teardown(() => app.close())
    await app.jwksAuth.refresh()
    await app.inject({ url: '/me' })
  }
  t.match(await shared.metrics(), /portcullis_auth_requests_total\{result="failure",reason="missing"\} 2/)
  const dup = Fastify()
  await dup.register(jwksAuth, { issuers: [{ issuer: issuer.url, audience: 'a' }], registry: shared })
  dup.register(jwksAuth, { issuers: [{ issuer: issuer.url, audience: 'b' }], registry: shared })
  await t.rejects(async () => { await dup.ready() }, /already registered/, 'a second registration in one context is refused')
  await dup.close()
})
