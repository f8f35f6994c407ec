import Fastify, { type FastifyInstance } from 'fastify'
import t from 'tap'
import jwksAuth, { type JwksAuthOptions } from '@portcullis/jwks-auth'
import metrics from '@portcullis/metrics'
import { rsaKey, startTestIssuer, type TestIssuer } from './helpers/issuer.js'

interface Clock { ms: number }

async function buildApp (issuer: TestIssuer, clock: Clock, opts: Partial<JwksAuthOptions> = {}): Promise<FastifyInstance> {
  const app = Fastify()
  await app.register(metrics, { defaultMetrics: false })
  await app.register(jwksAuth, {
    issuers: [{ issuer: issuer.url, audience: 'portcullis' }],
    now: () => clock.ms,
    // Timers stay out of the way: the tests call refresh() the way the timer would.
    refreshInterval: 3600,
    ...opts
  })
  app.get('/me', async (req) => ({ sub: req.user?.sub }))
  await app.ready()
  await app.jwksAuth.refresh()
  return app
}

const call = async (app: FastifyInstance, token: string): Promise<number> =>
  (await app.inject({ url: '/me', headers: { authorization: `Bearer ${token}` } })).statusCode

t.test('a pre-published key that starts signing verifies without any kid-miss fetch', async (t) => {
  const active = rsaKey({ label: 'rot-a' })
  const pending = rsaKey({ label: 'rot-b' })
  const issuer = await startTestIssuer({ keys: [active, pending] })
  t.teardown(() => issuer.close())
  const clock = { ms: Date.now() }
  const app = await buildApp(issuer, clock)
  t.teardown(() => app.close())
  const fetches = issuer.fetches
  const now = Math.floor(clock.ms / 1000)
  t.equal(await call(app, issuer.sign({}, { key: active, now })), 200)
  t.equal(await call(app, issuer.sign({}, { key: pending, now })), 200, 'the new key verifies at once')
  t.equal(issuer.fetches, fetches, 'no JWKS fetch was needed')
  const text = await app.metricsRegistry.metrics()
  t.notMatch(text, /portcullis_jwks_refresh_total\{result="kid_/, 'no kid-miss fetch counted')
})

t.test('a key removed from the JWKS stops verifying within one refresh interval, cached tokens included', async (t) => {
  const k1 = rsaKey({ label: 'rot-a' })
  const k2 = rsaKey({ label: 'rot-b' })
  const issuer = await startTestIssuer({ keys: [k1, k2] })
  t.teardown(() => issuer.close())
  const clock = { ms: Date.now() }
  const app = await buildApp(issuer, clock, { refreshInterval: 30 })
  t.teardown(() => app.close())
  const now = Math.floor(clock.ms / 1000)
  const old = issuer.sign({}, { key: k1, now })
  t.equal(await call(app, old), 200)
  t.equal(await call(app, old), 200, 'second use is a cache hit')

  await app.jwksAuth.refresh()
  t.equal(issuer.notModified, 1, 'an unchanged JWKS answers 304 to the conditional request')

  issuer.removeKey(k1.kid)
  clock.ms += 30_000 // one refresh interval later the timer refreshes
  await app.jwksAuth.refresh()
  t.equal(await call(app, old), 401, 'the cached verification was flushed with its key')
  t.equal(await call(app, issuer.sign({}, { key: k2, now })), 200, 'the remaining key still verifies')
  const text = await app.metricsRegistry.metrics()
  t.match(text, new RegExp(`portcullis_jwks_keys\\{issuer="${issuer.url}"\\} 1`))
  t.match(text, /portcullis_jwks_refresh_total\{result="not_modified"\} 1/)
})

t.test('the background timer refreshes on its interval (real timers, no sleep)', async (t) => {
  const k1 = rsaKey({ label: 'rot-a' })
  const k2 = rsaKey({ label: 'rot-b' })
  const issuer = await startTestIssuer({ keys: [k1, k2] })
  t.teardown(() => issuer.close())
  const app = Fastify()
  await app.register(jwksAuth, { issuers: [{ issuer: issuer.url, audience: 'portcullis' }], refreshInterval: 0.05 })
  app.get('/me', async (req) => ({ sub: req.user?.sub }))
  await app.ready()
  t.teardown(() => app.close())
  await issuer.waitForFetches(1)
  await app.jwksAuth.refresh()
  const old = issuer.sign({}, { key: k1 })
  t.equal(await call(app, old), 200)
  issuer.removeKey(k1.kid)
  // Only the timer fetches from here on: wait for its fetches (events, not sleeps) until the removal shows.
  let status = 200
  for (let i = 0; i < 20 && status === 200; i++) {
    await issuer.waitForFetches(issuer.fetches + 1)
    status = await call(app, old)
  }
  t.equal(status, 401, 'the timer noticed the removal')
})

t.test('a removed key cannot be resurrected by a kid-miss fetch or an outage', async (t) => {
  const k1 = rsaKey({ label: 'rot-a' })
  const k3 = rsaKey({ label: 'rot-c' })
  const issuer = await startTestIssuer({ keys: [k1] })
  t.teardown(() => issuer.close())
  const clock = { ms: Date.now() }
  const app = await buildApp(issuer, clock, { kidMissCooldown: 10 })
  t.teardown(() => app.close())
  const now = Math.floor(clock.ms / 1000)

  issuer.addKey(k3) // published after our last refresh: found through a kid-miss fetch
  const token = issuer.sign({}, { key: k3, now })
  const before = issuer.fetches
  t.equal(await call(app, token), 200)
  t.equal(issuer.fetches, before + 1, 'one kid-miss fetch')

  issuer.removeKey(k3.kid)
  await app.jwksAuth.refresh()
  issuer.mode = 'error' // the issuer now fails: no cached or stale copy of k3 may serve
  t.equal(await call(app, issuer.sign({ jti: 'replay' }, { key: k3, now })), 401)
  t.equal(issuer.fetches, before + 2, 'a kid that just left the set is refused without a fetch')
  // An hour later the removed kid is forgotten and treated as any unknown kid: one kid-miss fetch.
  clock.ms += 3600_000 + 11_000
  const later = Math.floor(clock.ms / 1000)
  const res = await app.inject({ url: '/me', headers: { authorization: `Bearer ${issuer.sign({ jti: 'again' }, { key: k3, now: later })}` } })
  t.equal(res.statusCode, 401, 'the removed key does not come back')
  t.equal(issuer.fetches, before + 3, 'the kid miss did try the (failing) issuer')
  t.equal(await call(app, issuer.sign({}, { key: k1, now: later })), 200, 'the kept key still verifies (stale, within the maximum stale age)')
})

t.test('regression: a kid-miss fetch triggered by a random kid also learns a new key in the same JWKS (no starvation)', async (t) => {
  const k1 = rsaKey({ label: 'rot-a' })
  const k2 = rsaKey({ label: 'rot-b' })
  const issuer = await startTestIssuer({ keys: [k1] })
  t.teardown(() => issuer.close())
  const clock = { ms: Date.now() }
  const app = await buildApp(issuer, clock, { kidMissCooldown: 30 })
  t.teardown(() => app.close())
  const now = Math.floor(clock.ms / 1000)
  issuer.addKey(k2) // an issuer that signs with a new key at once (no pre-publication)
  const before = issuer.fetches
  // The attacker's random kid spends the kid-miss fetch (and starts the cooldown) first.
  t.equal(await call(app, issuer.sign({}, { key: k1, now, kid: 'attacker-random-kid' })), 401)
  t.equal(issuer.fetches, before + 1, 'the random kid caused one fetch')
  // Inside the cooldown: the fetched document already named k2, so k2 must verify without a fetch.
  t.equal(await call(app, issuer.sign({}, { key: k2, now })), 200, 'the new key is not starved by the flood')
  t.equal(issuer.fetches, before + 1, 'no second fetch inside the cooldown')
})

t.test('regression: a kid published twice in the JWKS is not trusted through the kid-miss path either', async (t) => {
  const k1 = rsaKey({ label: 'rot-a' })
  const k2 = rsaKey({ label: 'rot-b' })
  const other = rsaKey({ label: 'rot-c' })
  const twin = { ...other.jwk, kid: k2.kid }
  const issuer = await startTestIssuer({ keys: [k1] })
  t.teardown(() => issuer.close())
  const clock = { ms: Date.now() }
  const app = await buildApp(issuer, clock)
  t.teardown(() => app.close())
  // Two keys under one kid: ambiguous, so neither may verify (the refresh refuses both).
  issuer.rawJwks = { keys: [k1.jwk, k2.jwk, twin] }
  t.equal(await call(app, issuer.sign({}, { key: k2 })), 401, 'the first of the twins is refused on a kid miss')
  t.equal(await call(app, issuer.sign({}, { key: k1 })), 200)
})

t.test('a key whose material changes under the same kid replaces the old one', async (t) => {
  const k1 = rsaKey({ label: 'rot-a' })
  const impostor = { ...rsaKey({ label: 'rot-d' }), kid: k1.kid }
  impostor.jwk = { ...impostor.jwk, kid: k1.kid }
  const issuer = await startTestIssuer({ keys: [k1] })
  t.teardown(() => issuer.close())
  const clock = { ms: Date.now() }
  const app = await buildApp(issuer, clock)
  t.teardown(() => app.close())
  const old = issuer.sign({}, { key: k1 })
  t.equal(await call(app, old), 200)
  issuer.published = [impostor]
  await app.jwksAuth.refresh()
  t.equal(await call(app, old), 401, 'tokens of the old material are refused, cache included')
  t.equal(await call(app, issuer.sign({}, { key: impostor })), 200)
})

t.test('a key change lifts the kid-miss cooldown: the next unknown kid fetches at once, the one after waits again', async (t) => {
  const k1 = rsaKey({ label: 'rot-a' })
  const k2 = rsaKey({ label: 'rot-b' })
  const k3 = rsaKey({ label: 'rot-c' })
  const issuer = await startTestIssuer({ keys: [k1] })
  t.teardown(() => issuer.close())
  const clock = { ms: Date.now() }
  const app = await buildApp(issuer, clock, { kidMissCooldown: 30 })
  t.teardown(() => app.close())
  const now = Math.floor(clock.ms / 1000)
  const before = issuer.fetches
  t.equal(await call(app, issuer.sign({}, { key: k1, now, kid: 'random-1' })), 401)
  t.equal(issuer.fetches, before + 1, 'the random kid spent the kid-miss fetch: cooldown armed')
  // a revoke: k1 leaves, k2 replaces it; the background refresh sees the change
  issuer.removeKey(k1.kid)
  issuer.addKey(k2)
  clock.ms += 1000
  await app.jwksAuth.refresh()
  t.equal(await call(app, issuer.sign({}, { key: k2, now })), 200, 'k2 learnt by the refresh')
  // another replica of the issuer is already on k3: its first token must not wait for the cooldown
  issuer.addKey(k3)
  const fetches = issuer.fetches
  t.equal(await call(app, issuer.sign({}, { key: k3, now })), 200, 'inside the old cooldown, k3 is fetched at once')
  t.equal(issuer.fetches, fetches + 1)
  // no change in that fetch? it did change (k3 added), but a second lift within one cooldown is refused
  t.equal(await call(app, issuer.sign({}, { key: k1, now, kid: 'random-2' })), 401)
  t.equal(await call(app, issuer.sign({}, { key: k1, now, kid: 'random-3' })), 401)
  t.equal(issuer.fetches, fetches + 1, 'random kids after that wait for the cooldown again: at most one lift per cooldown')
})

t.test('emergency revoke under a random-kid flood, default settings: the replacement key verifies within 5 s, with at most one fetch per cooldown', async (t) => {
  const old = rsaKey({ label: 'rev-old' })
  const replacement = rsaKey({ label: 'rev-new' })
  const issuer = await startTestIssuer({ keys: [old] })
  t.teardown(() => issuer.close())
  // real clock, every timing at its default (the background refresh, 30 s, does not run in this test)
  const app = Fastify()
  await app.register(jwksAuth, { issuers: [{ issuer: issuer.url, audience: 'portcullis' }] })
  app.get('/me', async (req) => ({ sub: req.user?.sub }))
  await app.ready()
  await app.jwksAuth.refresh()
  t.teardown(() => app.close())
  let flooding = true
  let floodRequests = 0
  const flood = (async () => {
    while (flooding) {
      floodRequests++
      await call(app, issuer.sign({}, { key: old, kid: `random-${floodRequests}` }))
      await new Promise((resolve) => setTimeout(resolve, 20))
    }
  })()
  t.teardown(async () => { flooding = false; await flood })
  await new Promise((resolve) => setTimeout(resolve, 300)) // the flood has armed the cooldown
  const fetchesBefore = issuer.fetches
  issuer.removeKey(old.kid)
  issuer.addKey(replacement)
  const start = Date.now()
  let waited = 0
  while (await call(app, issuer.sign({}, { key: replacement })) !== 200) {
    waited = Date.now() - start
    if (waited > 10_000) break
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  waited = Date.now() - start
  flooding = false
  await flood
  t.ok(waited <= 5000, `replacement-key token accepted after ${waited} ms (at most 5,000)`)
  const fetches = issuer.fetches - fetchesBefore
  // one fetch per 2 s cooldown over the wait, plus one lift after the change
  t.ok(fetches <= Math.ceil(waited / 2000) + 2, `${fetches} JWKS fetches in ${waited} ms under a flood of ${floodRequests} random kids`)
  t.ok(floodRequests > 20, 'the flood ran all along')
  t.equal(await call(app, issuer.sign({}, { key: old })), 401, 'the revoked key no longer verifies')
})
