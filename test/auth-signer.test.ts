import { generateKeyPairSync, type KeyObject } from 'node:crypto'
import { decodeProtectedHeader, importJWK, jwtVerify } from 'jose'
import pino from 'pino'
import t from 'tap'
import { Signer, type KeySource } from '../auth/signer.js'

function rsa (bits: number): { kid: string, privateKey: KeyObject, jwk: { kid: string, kty: string, n: string, e: string } } {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: bits })
  const j = publicKey.export({ format: 'jwk' }) as { n: string, e: string }
  const kid = `k${bits}-${j.n.slice(0, 8)}`
  return { kid, privateKey, jwk: { kid, kty: 'RSA', n: j.n, e: j.e } }
}

const log = pino({ level: 'silent' })

function fakeSource (): KeySource & { active: ReturnType<typeof rsa> | null, published: Array<ReturnType<typeof rsa>>, fail: boolean } {
  const s = {
    active: null as ReturnType<typeof rsa> | null,
    published: [] as Array<ReturnType<typeof rsa>>,
    fail: false,
    async activeSigningKey () {
      if (s.fail) throw new Error('store down')
      return s.active === null ? null : { kid: s.active.kid, privateKey: s.active.privateKey, activatedAt: 0 }
    },
    async publicJwks () {
      if (s.fail) throw new Error('store down')
      return { keys: s.published.map((k) => ({ ...k.jwk, use: 'sig', alg: 'RS256', d: 'must-not-leak' })) }
    }
  }
  return s
}

t.test('signs RS256 with the active key; the token verifies with jose against the published key', async (t) => {
  const src = fakeSource()
  const k = rsa(2048)
  src.active = k
  src.published = [k]
  const signer = new Signer({ keys: src, pollInterval: 1000, maxStaleness: 5000, log })
  await signer.start()
  t.teardown(() => signer.stop())
  const { token, kid } = signer.sign({ sub: 'x', iss: 'i', aud: 'a', exp: Math.floor(Date.now() / 1000) + 60 })
  t.equal(kid, k.kid)
  t.same(decodeProtectedHeader(token), { alg: 'RS256', typ: 'JWT', kid: k.kid })
  const served = JSON.parse(signer.jwks!.body) as { keys: Array<Record<string, string>> }
  t.same(Object.keys(served.keys[0]!).sort(), ['alg', 'e', 'kid', 'kty', 'n', 'use'], 'only public members are served')
  const { payload } = await jwtVerify(token, await importJWK({ ...served.keys[0]! }, 'RS256'), { issuer: 'i', audience: 'a' })
  t.equal(payload.sub, 'x')
})

t.test('no active key (none yet, or only pending/retired ones): never signs', async (t) => {
  const src = fakeSource()
  src.published = [rsa(2048)] // a pending key: published, not active
  const signer = new Signer({ keys: src, pollInterval: 1000, maxStaleness: 5000, log })
  await signer.start()
  t.teardown(() => signer.stop())
  t.equal(signer.ready, false)
  t.throws(() => signer.sign({}), { code: 'PORTCULLIS_AUTH_NO_SIGNING_KEY', statusCode: 503 })
})

t.test('an active key missing from the JWKS, or under 2048 bits, is refused', async (t) => {
  const src = fakeSource()
  const k = rsa(2048)
  src.active = k
  const changes: Array<string | null> = []
  const signer = new Signer({ keys: src, pollInterval: 1000, maxStaleness: 5000, log, onKeyChange: (kid) => changes.push(kid) })
  await signer.start()
  t.teardown(() => signer.stop())
  t.equal(signer.kid, null, 'not published: verifiers could not check its tokens')
  src.published = [k]
  await signer.refresh()
  t.equal(signer.kid, k.kid)
  const weak = rsa(1024)
  src.active = weak
  src.published = [k, weak]
  await signer.refresh()
  t.equal(signer.kid, null, '1024-bit key refused')
  t.same(changes, [k.kid, null])
})

t.test('when the store cannot be read, signing stops once the view is older than maxStaleness', async (t) => {
  const src = fakeSource()
  const k = rsa(2048)
  src.active = k
  src.published = [k]
  let now = 1_000_000
  let failures = 0
  // pollInterval far beyond the test: only the explicit refresh() below may fail, even on a stalled machine
  const signer = new Signer({ keys: src, pollInterval: 60_000, maxStaleness: 5000, log, clock: () => now, onRefreshError: () => failures++ })
  await signer.start()
  t.teardown(() => signer.stop())
  src.fail = true
  now += 4000
  await signer.refresh()
  t.equal(failures, 1)
  t.equal(signer.kid, k.kid, 'a short outage keeps the known key (it was active 4 s ago)')
  now += 1001
  t.equal(signer.ready, false, 'past SIGNER_PROPAGATION it could have been revoked: stop')
  t.throws(() => signer.sign({}), { code: 'PORTCULLIS_AUTH_NO_SIGNING_KEY' })
  src.fail = false
  await signer.refresh()
  t.equal(signer.ready, true, 'recovers on the next good read')
})

t.test('start fails when the store cannot be read at all', async (t) => {
  const src = fakeSource()
  src.fail = true
  const signer = new Signer({ keys: src, pollInterval: 1000, maxStaleness: 5000, log })
  await t.rejects(signer.start(), /could not read the key store/)
  signer.stop()
})

t.test('a failed start names the reason (regression: "could not read the key store" alone hid a wrong PORTCULLIS_KEY_SECRETS)', async (t) => {
  const keys: KeySource = {
    activeSigningKey: async () => { throw new Error('cannot decrypt private key K1: sealed with secret id abc') },
    publicJwks: async () => ({ keys: [] })
  }
  const signer = new Signer({ keys, pollInterval: 1000, maxStaleness: 5000, log })
  await t.rejects(signer.start(), { message: 'signer: could not read the key store: cannot decrypt private key K1: sealed with secret id abc' })
  signer.stop()
})

t.test('a failed start logs nothing (the boot prints its one line); a failed read once running is logged', async (t) => {
  const lines: Array<{ level: number, msg: string }> = []
  const logger = pino({ level: 'info' }, { write: (l: string) => { lines.push(JSON.parse(l) as { level: number, msg: string }) } })
  const src = fakeSource()
  src.fail = true
  const failing = new Signer({ keys: src, pollInterval: 1000, maxStaleness: 5000, log: logger })
  await t.rejects(failing.start(), /could not read the key store: store down/)
  failing.stop()
  t.same(lines, [], 'no error line before the boot\'s own message')
  const k = rsa(2048)
  src.fail = false
  src.active = k
  src.published = [k]
  const running = new Signer({ keys: src, pollInterval: 60_000, maxStaleness: 120_000, log: logger })
  await running.start()
  t.teardown(() => running.stop())
  src.fail = true
  await running.refresh()
  t.match(lines.filter((l) => l.level >= 50), [{ msg: 'could not read the key store' }], 'a later failure is an error line')
})
