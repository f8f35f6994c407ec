import { createPrivateKey } from 'node:crypto'
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import pino from 'pino'
import t from 'tap'
import { tickDecision } from '../store/key-lifecycle.js'
import { keySecretsFromList, secretId } from '../store/crypto.js'
import { jwkThumbprint } from '../store/jwk.js'
import { DEFAULT_KEY_TIMINGS } from '../store/key-timings.js'
import { KEY_EVENTS_TABLE, KEYS_TABLE } from '../store/keys-schema.js'
import { openKeyStore } from '../store/keys.js'
import { loadKeySecrets } from '../store/secrets.js'
import type { Db } from '../store/db.js'
import { testBackends } from './helpers/backends.js'

const OLD = 'old-secret-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'
const NEW = 'new-secret-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbb'

function captureLog (): { log: pino.Logger, lines: () => Array<Record<string, unknown>> } {
  const out: string[] = []
  const stream = new Writable({ write (chunk, _enc, cb) { out.push(String(chunk)); cb() } })
  return { log: pino({ level: 'info' }, stream), lines: () => out.join('').split('\n').filter((l) => l !== '').map((l) => JSON.parse(l) as Record<string, unknown>) }
}

async function dump (db: Db): Promise<unknown[]> {
  return await db.query(`SELECT * FROM ${KEYS_TABLE} ORDER BY kid`)
}

t.test('kid is the RFC 7638 thumbprint (the RFC\'s own example)', async (t) => {
  const n = '0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw'
  t.equal(jwkThumbprint({ kty: 'RSA', n, e: 'AQAB' }), 'NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs')
})

t.test('sealing: AES-256-GCM bound to the kid, any listed secret opens, the first seals', async (t) => {
  const a = keySecretsFromList([OLD])
  const sealed = a.seal(Buffer.from('private bytes'), 'kid-1')
  t.match(sealed, new RegExp(`^v1\\.${secretId(OLD)}\\.`))
  t.equal(a.open(sealed, 'kid-1').toString(), 'private bytes')
  t.throws(() => a.open(sealed, 'kid-2'), { name: 'UnsealError', reason: 'corrupt' } as unknown as Error, 'a sealed key moved to another row does not open')
  const both = keySecretsFromList([NEW, OLD])
  t.equal(both.open(sealed, 'kid-1').toString(), 'private bytes', 'old secret still opens')
  t.equal(both.sealedWith(both.seal(Buffer.from('x'), 'k')), secretId(NEW), 'new secret seals')
  t.throws(() => keySecretsFromList([NEW]).open(sealed, 'kid-1'), { name: 'UnsealError', reason: 'unknown-secret', message: new RegExp(`sealed with secret id ${secretId(OLD)}`) } as unknown as Error)
})

t.test('loadKeySecrets: env list validated; without it a 0600 local secret is generated once, with a warning', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-secrets-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const { log, lines } = captureLog()
  await t.rejects(loadKeySecrets({ PORTCULLIS_KEY_SECRETS: `${NEW},short` }, dir, log), { message: /PORTCULLIS_KEY_SECRETS: secret #2 is 5 characters long/ })
  const err = await loadKeySecrets({ PORTCULLIS_KEY_SECRETS: 'shortsecret' }, dir, log).then(() => null, (e: Error) => e)
  t.match(err?.message, /secret #1 is 11 characters long/)
  t.notMatch(err?.message, /shortsecret/, 'the secret itself is never printed')
  const env = await loadKeySecrets({ PORTCULLIS_KEY_SECRETS: ` ${NEW} , ${OLD} ` }, dir, log)
  t.same(env.ids, [secretId(NEW), secretId(OLD)])
  t.equal(env.source, 'env')
  t.same(readdirSync(dir), [], 'nothing written when the env var is set')

  const first = await loadKeySecrets({}, join(dir, 'data'), log)
  t.equal(first.source, 'file')
  const file = join(dir, 'data', 'key-secret')
  t.equal(statSync(file).mode & 0o777, 0o600)
  t.ok(readFileSync(file, 'utf8').trim().length >= 32)
  t.match(lines().filter((l) => l.level === 40).map((l) => l.msg), [/PORTCULLIS_KEY_SECRETS is not set: generated a local key-encryption secret/])
  const again = await loadKeySecrets({}, join(dir, 'data'), log)
  t.same(again.ids, first.ids, 'the same secret is read back')
  t.same(readdirSync(join(dir, 'data')), ['key-secret'], 'no temp file left behind')
})

for (const b of await testBackends()) {
  t.test(`secrets on ${b.name}: no plaintext at rest, wrong/missing secret, secret rotation, corrupt rows`, { skip: b.skip }, async (t) => {
    const be = await b.open()
    t.teardown(be.cleanup)
    let now = 1_800_000_000_000
    const oldStore = await openKeyStore(be.db, { secrets: keySecretsFromList([OLD]), now: () => now })
    const active = await oldStore.rotateNow({ activateNow: true })
    const pending = await oldStore.rotateNow({ activateNow: false })

    // Raw rows: only sealed text, nothing of the private key in any encoding.
    const rows = await be.db.query<{ kid: string, private_sealed: string, public_jwk: string }>(`SELECT * FROM ${KEYS_TABLE}`)
    const raw = JSON.stringify(rows)
    const ders: Buffer[] = []
    for (const kid of [active.kid, pending.kid]) {
      const row = rows.find((r) => r.kid === kid)!
      t.match(row.private_sealed, /^v1\.[0-9a-f]{12}\.[\w-]+\.[\w-]+\.[\w-]+$/)
      const der = keySecretsFromList([OLD]).open(row.private_sealed, kid)
      ders.push(der)
      const jwk = createPrivateKey({ key: der, format: 'der', type: 'pkcs8' }).export({ format: 'jwk' })
      const pem = createPrivateKey({ key: der, format: 'der', type: 'pkcs8' }).export({ format: 'pem', type: 'pkcs8' }).toString()
      const needles = [der.toString('base64'), der.toString('base64url'), der.toString('hex'), pem.split('\n')[1]!, jwk.d!, jwk.p!, jwk.q!, jwk.dp!, jwk.dq!, jwk.qi!]
      for (const needle of needles) t.notOk(raw.includes(needle.slice(0, 40)), 'private material absent from raw rows')
      t.notOk(raw.includes('PRIVATE KEY'))
      t.same(Object.keys(JSON.parse(row.public_jwk)).sort(), ['e', 'kty', 'n'])
    }
    if (b.name === 'sqlite') {
      // The database file and its WAL, byte by byte.
      const dir = be.env.PORTCULLIS_DATA_DIR!
      for (const f of readdirSync(dir)) {
        const bytes = readFileSync(join(dir, f))
        for (const der of ders) t.equal(bytes.indexOf(der.subarray(40, 104)), -1, `no private DER bytes in ${f}`)
      }
    }

    // A wrong secret: a clear error naming the kid and the ids; nothing changes.
    const before = await dump(be.db)
    const wrong = await openKeyStore(be.reopen(), { secrets: keySecretsFromList([NEW]), now: () => now })
    await t.rejects(wrong.activeSigningKey(), { code: 'PORTCULLIS_KEY_SECRET', message: new RegExp(`cannot decrypt private key ${active.kid}: sealed with secret id ${secretId(OLD)}, which is not among the configured secrets \\(${secretId(NEW)}\\); set PORTCULLIS_KEY_SECRETS`) })
    now += 30 * 86400_000 // a tick would rotate now ...
    await t.rejects(wrong.apply(tickDecision(DEFAULT_KEY_TIMINGS)), { code: 'PORTCULLIS_KEY_SECRET' })
    await t.rejects(wrong.rotateNow({ activateNow: true }), { code: 'PORTCULLIS_KEY_SECRET' })
    await t.rejects(wrong.verifySecrets(), { code: 'PORTCULLIS_KEY_SECRET' })
    t.same(await dump(be.db), before, '... but with the wrong secret it changed nothing')

    // A missing secret (env unset): the generated local secret cannot open the keys either.
    const dir = mkdtempSync(join(tmpdir(), 'portcullis-missing-'))
    t.teardown(() => rmSync(dir, { recursive: true, force: true }))
    const local = await loadKeySecrets({}, dir, pino({ level: 'silent' }))
    const missing = await openKeyStore(be.db, { secrets: local, now: () => now })
    await t.rejects(missing.apply(tickDecision(DEFAULT_KEY_TIMINGS)), { code: 'PORTCULLIS_KEY_SECRET', message: /set PORTCULLIS_KEY_SECRETS/ })
    t.same(await dump(be.db), before)

    // Secret rotation: NEW first, OLD still listed. Old keys stay readable; a tick reseals them under NEW.
    const { log, lines } = captureLog()
    const rotated = await openKeyStore(be.db, { secrets: keySecretsFromList([NEW, OLD]), now: () => now, log })
    t.equal((await rotated.activeSigningKey())!.kid, active.kid, 'old-secret key readable after the secret rotation')
    const res = await rotated.apply(() => [])
    t.same(res.changes.map((c) => c.op).sort(), ['reseal', 'reseal'])
    t.same(lines().filter((l) => l.event === 'key_reseal').map((l) => l.kid).sort(), [active.kid, pending.kid].sort(), 'one log line per resealed key')
    const sealedWith = await be.db.query<{ s: string }>(`SELECT private_sealed AS s FROM ${KEYS_TABLE} WHERE private_sealed IS NOT NULL`)
    t.ok(sealedWith.every((r) => r.s.split('.')[1] === secretId(NEW)), 'every private part now sealed with the new secret')
    const newOnly = await openKeyStore(be.db, { secrets: keySecretsFromList([NEW]), now: () => now })
    t.equal((await newOnly.activeSigningKey())!.kid, active.kid, 'the old secret can now be dropped')
    t.equal((await be.db.query(`SELECT * FROM ${KEY_EVENTS_TABLE} WHERE event = 'reseal'`)).length, 2)

    // Corrupt rows: named, refused, nothing changed.
    const good = await dump(be.db)
    const sealed = (await be.db.query<{ s: string }>(`SELECT private_sealed AS s FROM ${KEYS_TABLE} WHERE kid = ?`, [active.kid]))[0]!.s
    const flipped = sealed.slice(0, -3) + (sealed.at(-3) === 'A' ? 'B' : 'A') + sealed.slice(-2)
    await be.db.run(`UPDATE ${KEYS_TABLE} SET private_sealed = ? WHERE kid = ?`, [flipped, active.kid])
    const tampered = await dump(be.db)
    await t.rejects(newOnly.activeSigningKey(), { code: 'PORTCULLIS_KEY_CORRUPT', message: `corrupt key row ${active.kid}: sealed private key failed authentication (corrupt or altered)` })
    await t.rejects(newOnly.apply(tickDecision(DEFAULT_KEY_TIMINGS)), { code: 'PORTCULLIS_KEY_CORRUPT' })
    t.same(await dump(be.db), tampered, 'a tick over a corrupt row changes nothing')
    await be.db.run(`UPDATE ${KEYS_TABLE} SET private_sealed = ? WHERE kid = ?`, [sealed, active.kid])
    await be.db.run(`UPDATE ${KEYS_TABLE} SET public_jwk = ? WHERE kid = ?`, ['{"kty":"RSA","n":"AQAB","e":"AQAB"}', pending.kid])
    await t.rejects(newOnly.publicJwks(), { message: `corrupt key row ${pending.kid}: public key does not match its kid (RFC 7638 thumbprint)` })
    await be.db.run(`UPDATE ${KEYS_TABLE} SET public_jwk = ? WHERE kid = ?`, ['not json', pending.kid])
    await t.rejects(newOnly.list(), { message: `corrupt key row ${pending.kid}: public key is not valid JSON` })
    await be.db.run(`UPDATE ${KEYS_TABLE} SET public_jwk = ? WHERE kid = ?`, [(good as Array<{ kid: string, public_jwk: string }>).find((r) => r.kid === pending.kid)!.public_jwk, pending.kid])
    t.same(await dump(be.db), good)
  })
}
