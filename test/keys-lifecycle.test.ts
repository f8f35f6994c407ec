import t from 'tap'
import { createLocalJWKSet, jwtVerify, SignJWT } from 'jose'
import pino from 'pino'
import { tickDecision } from '../store/key-lifecycle.js'
import { keySecretsFromList } from '../store/crypto.js'
import { KEYS_TABLE } from '../store/keys-schema.js'
import { keyTimingsFromEnv, validateKeyTimings, DEFAULT_KEY_TIMINGS, type KeyTimings } from '../store/key-timings.js'
import { openKeyStore } from '../store/keys.js'
import type { Db, Tx } from '../store/db.js'
import { testBackends } from './helpers/backends.js'

/** Short simulated timings (seconds) that satisfy the rules: min pre-publish 36, min retire window 96. */
const TEST_TIMINGS: KeyTimings = validateKeyTimings({
  accessTokenTtl: 60, clockSkew: 5, verifierCacheMax: 30, signerPropagation: 1, prePublish: 100, retireWindow: 100, period: 400
})
const T0 = 1_800_000_000_000
const S = (s: number): number => T0 + s * 1000
const secrets = keySecretsFromList(['lifecycle-test-secret-0123456789abcdef'])

async function dump (db: Db): Promise<unknown[]> {
  return await db.query(`SELECT * FROM ${KEYS_TABLE} ORDER BY kid`)
}

t.test('unsafe timings are refused, naming the setting and the rule', async (t) => {
  const ok = { ...TEST_TIMINGS }
  t.throws(() => validateKeyTimings({ ...ok, prePublish: 35 }), /KEY_PREPUBLISH: must be >= VERIFIER_CACHE_MAX \+ CLOCK_SKEW \+ SIGNER_PROPAGATION = 36s/)
  t.throws(() => validateKeyTimings({ ...ok, retireWindow: 95 }), /KEY_RETIRE_WINDOW: must be >= SIGNER_PROPAGATION \+ ACCESS_TOKEN_TTL \+ CLOCK_SKEW \+ VERIFIER_CACHE_MAX = 96s/)
  t.throws(() => validateKeyTimings({ ...ok, period: 100 }), /KEY_ROTATION_PERIOD: must be longer than KEY_PREPUBLISH/)
  t.throws(() => validateKeyTimings({ ...ok, accessTokenTtl: 0 }), /ACCESS_TOKEN_TTL/)
  t.throws(() => keyTimingsFromEnv({ KEY_PREPUBLISH: '10m', VERIFIER_CACHE_MAX: '15m' }), /KEY_PREPUBLISH: must be >= .* = 965s/)
  t.throws(() => keyTimingsFromEnv({ ACCESS_TOKEN_TTL: '2h' }), /KEY_RETIRE_WINDOW.*= 7565s.*got 3600s/)
  t.throws(() => keyTimingsFromEnv({ KEY_ROTATION_PERIOD: 'weekly' }), /KEY_ROTATION_PERIOD: expected a duration/)
  t.throws(() => keyTimingsFromEnv({ KEY_ROTATION_PERIOD: '30m' }), /KEY_ROTATION_PERIOD: must be longer than KEY_PREPUBLISH \(3600s\)/)
  t.same(keyTimingsFromEnv({}), DEFAULT_KEY_TIMINGS, 'defaults are safe')
  t.same(keyTimingsFromEnv({ KEY_ROTATION_PERIOD: '1d', KEY_PREPUBLISH: '2h' }), { ...DEFAULT_KEY_TIMINGS, period: 86400, prePublish: 7200 })
})

for (const b of await testBackends()) {
  t.test(`key lifecycle on ${b.name} with an injected clock`, { skip: b.skip }, async (t) => {
    const be = await b.open()
    t.teardown(be.cleanup)
    let now = T0
    const ks = await openKeyStore(be.db, { secrets, now: () => now, timings: TEST_TIMINGS })
    const tick = async (): Promise<string[]> => (await ks.apply(tickDecision(TEST_TIMINGS))).changes.map((c) => `${c.op}:${c.kid}`)
    const states = async (): Promise<Record<string, string>> => Object.fromEntries((await ks.list()).map((k) => [k.kid, k.state]))
    const jwksKids = async (): Promise<string[]> => (await ks.publicJwks()).keys.map((k) => k.kid).sort()
    const privateOf = async (kid: string): Promise<unknown> => (await be.db.query<{ p: unknown }>(`SELECT private_sealed AS p FROM ${KEYS_TABLE} WHERE kid = ?`, [kid]))[0]?.p

    // Bootstrap: an empty store gets its first key, active at once.
    t.equal(await ks.activeSigningKey(), null)
    t.same(await ks.publicJwks(), { keys: [] })
    const boot = await tick()
    t.equal(boot.length, 1)
    const A = (await ks.activeSigningKey())!.kid
    t.same(boot, [`create:${A}`])
    t.same(await tick(), [], 'a second tick at the same instant changes nothing')

    // Tokens signed with the active key verify against the published JWKS (jose as the oracle).
    const signer = (await ks.activeSigningKey())!
    const jwt = await new SignJWT({ sub: 'u1' }).setProtectedHeader({ alg: 'RS256', kid: signer.kid }).sign(signer.privateKey)
    t.equal((await jwtVerify(jwt, createLocalJWKSet(await ks.publicJwks()))).payload.sub, 'u1')
    t.same(Object.keys((await ks.publicJwks()).keys[0]!).sort(), ['alg', 'e', 'kid', 'kty', 'n', 'use'], 'public members only')

    // Pre-publish: nothing until period - prePublish (300 s), then a pending key that activates at 400 s.
    now = S(299.999)
    t.same(await tick(), [])
    now = S(300)
    const pre = await tick()
    t.equal(pre.length, 1)
    const B = pre[0]!.split(':')[1]!
    t.same(await states(), { [A]: 'active', [B]: 'pending' })
    t.same(await jwksKids(), [A, B].sort(), 'the pending key is published before it signs')
    t.equal((await ks.activeSigningKey())!.kid, A, 'the pending key does not sign')
    t.equal((await ks.list()).find((k) => k.kid === B)!.activatesAt, S(400))

    // Activation at exactly one period; the old key retires and its private part is destroyed.
    now = S(399.999)
    t.same(await tick(), [])
    now = S(400)
    t.same(await tick(), [`retire:${A}`, `activate:${B}`])
    t.same(await states(), { [A]: 'retired', [B]: 'active' })
    t.equal(await privateOf(A), null, 'retired key has no private part')
    t.equal((await ks.activeSigningKey())!.kid, B)
    t.same(await jwksKids(), [A, B].sort(), 'the retired key stays published')
    t.equal((await jwtVerify(jwt, createLocalJWKSet(await ks.publicJwks()))).payload.sub, 'u1', 'tokens from the retired key still verify')

    // Prune after the retire window.
    now = S(499.999)
    t.same(await tick(), [])
    now = S(500)
    t.same(await tick(), [`prune:${A}`])
    t.same(await jwksKids(), [B])
    t.same(await states(), { [B]: 'active' })

    // Revoke a pending key: unpublished at once; the next tick pre-publishes a new one.
    now = S(700)
    const C = (await tick())[0]!.split(':')[1]!
    t.same(await ks.revoke(C), { kid: C })
    t.same(await jwksKids(), [B], 'revoked pending key left the JWKS')
    t.equal(await privateOf(C), null)
    const D = (await tick()).find((c) => c.startsWith('create:'))!.split(':')[1]!
    t.equal((await ks.list()).find((k) => k.kid === D)!.state, 'pending')

    // Revoke the active key with a pending one: the pending key is activated in the same transaction.
    t.same(await ks.revoke(B), { kid: B, replacement: D })
    t.same(await states(), { [B]: 'revoked', [C]: 'revoked', [D]: 'active' })
    t.same(await jwksKids(), [D])
    t.equal((await ks.activeSigningKey())!.activatedAt, now)

    // Revoke the active key with no pending one: a new key is generated and active at once.
    const r = await ks.revoke(D)
    t.ok(r.replacement !== undefined && r.replacement !== D)
    t.equal((await ks.activeSigningKey())!.kid, r.replacement)
    t.same(await jwksKids(), [r.replacement!])

    // Bad revokes change nothing.
    const before = await dump(be.db)
    await t.rejects(ks.revoke('no-such-kid'), { code: 'PORTCULLIS_KEY_NOT_FOUND', message: 'no signing key with kid "no-such-kid"' })
    await t.rejects(ks.revoke(B), { code: 'PORTCULLIS_KEY_STATE', message: `key ${B}: is already revoked` })
    t.same(await dump(be.db), before, 'store unchanged')

    // Revoked keys are pruned after the retire window too.
    now += 100_000
    t.same((await tick()).filter((c) => c.startsWith('prune:')).sort(), [`prune:${B}`, `prune:${C}`, `prune:${D}`].sort())

    // A worker that was down for several periods makes one rotation, still pre-publishing first.
    const E = r.replacement!
    now += 3 * 400_000
    const late = await tick()
    t.equal(late.length, 1)
    const F = late[0]!.split(':')[1]!
    t.equal((await ks.list()).find((k) => k.kid === F)!.activatesAt, now + 100_000, 'a late pending key still waits the pre-publish window')
    t.same(await tick(), [])
    now += 100_000
    t.same(await tick(), [`retire:${E}`, `activate:${F}`])

    // keys rotate: a pending key now; again: the same one; --activate-now: that one signs at once.
    const p1 = await ks.rotateNow({ activateNow: false })
    t.match(p1, { state: 'pending', created: true, activatesAt: now + 100_000 })
    t.match(await ks.rotateNow({ activateNow: false }), { kid: p1.kid, state: 'pending', created: false })
    t.match(await ks.rotateNow({ activateNow: true }), { kid: p1.kid, state: 'active', created: false, activatesAt: now })
    t.equal((await ks.list()).find((k) => k.kid === F)!.state, 'retired')
    // --activate-now with no pending key generates one (3072-bit on request).
    const p2 = await ks.rotateNow({ activateNow: true, keySize: 3072 })
    t.match(p2, { state: 'active', created: true })
    t.equal((await ks.list()).find((k) => k.kid === p2.kid)!.keySize, 3072)
    t.equal((await ks.list()).filter((k) => k.state === 'active').length, 1)

    // The database itself refuses a second active key (partial unique index belt).
    const p3 = await ks.rotateNow({ activateNow: false })
    await t.rejects(be.db.run(`UPDATE ${KEYS_TABLE} SET state = 'active' WHERE kid = ?`, [p3.kid]), /unique/i)
    // ... and a signing key without its sealed private part (CHECK constraint).
    await t.rejects(be.db.run(`UPDATE ${KEYS_TABLE} SET private_sealed = NULL WHERE kid = ?`, [p3.kid]), /check/i)
    t.equal((await ks.list()).filter((k) => k.state === 'active').length, 1)
  })
}

t.test('a state change is logged only once its transaction committed (regression: lines were written before COMMIT)', async (t) => {
  const be = await (await testBackends())[0]!.open()
  t.teardown(be.cleanup)
  const out: string[] = []
  const log = pino({ level: 'info' }, { write: (s: string) => { out.push(s) } })
  const events = (): string[] => out.map((l) => (JSON.parse(l) as { event?: string }).event ?? '').filter((e) => e.startsWith('key_'))
  // The same store whose COMMIT fails after the transaction's statements ran (a lost connection, a kill).
  let failCommit = false
  const db = be.db
  const flaky: Db = {
    dialect: db.dialect,
    description: db.description,
    location: db.location,
    ready: async () => await db.ready(),
    query: async (sql, params) => await db.query(sql, params),
    run: async (sql, params) => await db.run(sql, params),
    close: async () => await db.close(),
    transaction: async <R>(fn: (tx: Tx) => Promise<R>): Promise<R> => await db.transaction(async (tx) => {
      const r = await fn(tx)
      if (failCommit) throw new Error('commit failed')
      return r
    })
  }
  const ks = await openKeyStore(flaky, { secrets, now: () => T0, timings: TEST_TIMINGS, log })
  failCommit = true
  await t.rejects(ks.apply(tickDecision(TEST_TIMINGS)), /commit failed/)
  t.same(await ks.list(), [], 'nothing was stored')
  t.same(events(), [], 'no line claims a change that did not happen')
  failCommit = false
  const res = await ks.apply(tickDecision(TEST_TIMINGS))
  t.same(events(), ['key_create'], 'a committed change is logged')
  t.equal(out.length > 0 && (JSON.parse(out[0]!) as { kid: string }).kid, res.changes[0]!.kid)
})
