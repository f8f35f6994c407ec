import { mkdtempSync, rmSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { buildAuthService } from '../auth/server.js'
import { KEYS_TABLE } from '../store/keys-schema.js'
import { KeyStore } from '../store/keys.js'
import { keySecretsFromList } from '../store/crypto.js'
import { openDb } from '../store/index.js'
import { PostgresDb } from '../store/postgres.js'
import { authFixture } from './helpers/auth-fixture.js'
import { testBackends } from './helpers/backends.js'

// The auth admin listener's GET /keys: every key's state and timeline from the store, oldest
// first, ISO 8601 timestamps, and never any key material; a store that cannot be read is a 503
// with the admin listeners' JSON error shape, not a crash.

const MEMBERS = ['activatedAt', 'activatesAt', 'createdAt', 'keySize', 'kid', 'retiredAt', 'revokedAt', 'state']
const ISO = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/

interface Entry { kid: string, state: string, keySize: number, createdAt: string, activatesAt: string | null, activatedAt: string | null, retiredAt: string | null, revokedAt: string | null }

/** Every object key anywhere in a JSON value. */
function allKeys (v: unknown, into: Set<string> = new Set()): Set<string> {
  if (Array.isArray(v)) for (const x of v) allKeys(x, into)
  else if (v !== null && typeof v === 'object') {
    for (const [k, x] of Object.entries(v)) { into.add(k); allKeys(x, into) }
  }
  return into
}

/** A TCP port on 127.0.0.1 that nothing listens on (taken, then released). */
async function closedPort (): Promise<number> {
  const srv = createServer()
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve))
  const port = (srv.address() as { port: number }).port
  await new Promise<void>((resolve) => srv.close(() => resolve()))
  return port
}

for (const backend of await testBackends()) {
  t.test(backend.name, { skip: backend.skip }, async (t) => {
    const b = await backend.open()
    const f = await authFixture(b, { activeKey: false })
    t.teardown(async () => { await f.service.close(); await b.cleanup() })
    const { admin, app } = f.service

    await t.test('an empty store: no keys', async (t) => {
      const res = await admin.inject({ url: '/keys' })
      t.equal(res.statusCode, 200)
      t.same(res.json(), { keys: [] })
    })

    await t.test('pending, active, retired and revoked keys, oldest first, timestamps in ISO 8601, no key material', async (t) => {
      // revoked: the first key, revoked while active (its replacement, a new key, becomes active)
      const first = await f.keys.rotateNow({ activateNow: true })
      const second = (await f.keys.revoke(first.kid)).replacement!
      // retired: the second key, once a third is activated
      const third = await f.keys.rotateNow({ activateNow: true })
      // pending: a fourth, waiting for its pre-publish window
      const fourth = await f.keys.rotateNow({ activateNow: false })
      t.equal(fourth.state, 'pending')

      const res = await admin.inject({ url: '/keys' })
      t.equal(res.statusCode, 200)
      t.match(res.headers['content-type'], /^application\/json/)
      t.equal(res.headers['cache-control'], 'no-store')
      const body = res.json() as { keys: Entry[] }
      t.same(Object.keys(body), ['keys'], 'one member: keys')
      t.same(body.keys.map((k) => [k.kid, k.state]), [
        [first.kid, 'revoked'], [second, 'retired'], [third.kid, 'active'], [fourth.kid, 'pending']
      ], 'one entry per key, ordered by createdAt, with its state')

      const stored = await f.keys.list()
      for (const k of body.keys) {
        t.same(Object.keys(k).sort(), MEMBERS, `${k.state}: exactly the listed members`)
        const rec = stored.find((r) => r.kid === k.kid)!
        t.equal(k.keySize, rec.keySize)
        t.equal(k.createdAt, new Date(rec.createdAt).toISOString(), `${k.state}: createdAt from the store`)
        for (const m of ['createdAt', 'activatesAt', 'activatedAt', 'retiredAt', 'revokedAt'] as const) {
          const v = k[m]
          const want = rec[m]
          if (want === null) t.equal(v, null, `${k.state}: ${m} is null`)
          else {
            t.match(v, ISO, `${k.state}: ${m} is ISO 8601`)
            t.equal(Date.parse(v!), want, `${k.state}: ${m} is the stored time`)
          }
        }
      }
      const [revoked, retired, active, pending] = body.keys
      t.not(revoked!.revokedAt, null, 'the revoked key has revokedAt')
      t.not(retired!.retiredAt, null, 'the retired key has retiredAt')
      t.equal(retired!.revokedAt, null)
      t.not(active!.activatedAt, null, 'the active key has activatedAt')
      t.equal(active!.retiredAt, null)
      t.equal(pending!.activatedAt, null, 'the pending key is not activated')
      t.not(pending!.activatesAt, null, 'the pending key has activatesAt')

      const names = allKeys(body)
      for (const secret of ['n', 'e', 'd', 'p', 'q', 'dp', 'dq', 'qi', 'publicKey', 'privateKey', 'hasPrivate']) {
        t.notOk(names.has(secret), `no "${secret}" member anywhere`)
      }
      const jwks = (await app.inject({ url: '/.well-known/jwks.json' })).json() as { keys: Array<{ n: string }> }
      t.ok(jwks.keys.length > 0)
      for (const k of jwks.keys) t.notOk(res.body.includes(k.n), 'no modulus in the body')
    })

    await t.test('read from the store at each request: a change made elsewhere shows at once', async (t) => {
      const before = (await admin.inject({ url: '/keys' })).json() as { keys: Entry[] }
      const pending = before.keys.find((k) => k.state === 'pending')!
      // another process (the rotation worker) activates the pending key; auth's signer has not polled yet
      await f.keys.rotateNow({ activateNow: true })
      const after = (await admin.inject({ url: '/keys' })).json() as { keys: Entry[] }
      t.equal(after.keys.find((k) => k.kid === pending.kid)!.state, 'active')
      t.equal(after.keys.filter((k) => k.state === 'active').length, 1)
      t.equal(after.keys.filter((k) => k.state === 'retired').length, 2)
    })

    await t.test('a corrupt key row: 503 naming the row, never a crash; 200 again once it is fixed', async (t) => {
      const rows = await b.db.query<{ kid: string, public_jwk: string }>(`SELECT kid, public_jwk FROM ${KEYS_TABLE} WHERE state = ?`, ['retired'])
      const row = rows[0]!
      await b.db.run(`UPDATE ${KEYS_TABLE} SET public_jwk = ? WHERE kid = ?`, ['{"kty":"EC"}', row.kid])
      const res = await admin.inject({ url: '/keys' })
      t.equal(res.statusCode, 503)
      t.equal(res.headers['cache-control'], 'no-store')
      const body = res.json() as Record<string, unknown>
      t.same(Object.keys(body).sort(), ['code', 'error', 'message', 'statusCode'])
      t.same(body, { statusCode: 503, code: 'PORTCULLIS_KEY_CORRUPT', error: 'Service Unavailable', message: `corrupt key row ${row.kid}: public key is not an RSA key` })
      t.ok(f.logs.some((l) => l.event === 'key_store_read_failed' && l.level === 50), 'logged at error')
      t.equal((await admin.inject({ url: '/health/live' })).statusCode, 200, 'the admin app still answers')
      await b.db.run(`UPDATE ${KEYS_TABLE} SET public_jwk = ? WHERE kid = ?`, [row.public_jwk, row.kid])
      t.equal((await admin.inject({ url: '/keys' })).statusCode, 200)
    })
  })
}

t.test('a store that cannot be read: 503 with the JSON error shape, nothing about the store; 200 once it is back', async (t) => {
  const [backend] = await testBackends()
  const b = await backend!.open()
  const f = await authFixture(b)
  const port = await closedPort()
  // real KeyStores on stores that fail as in an outage: a PostgreSQL server that refuses
  // connections, and an SQLite connection that has been closed
  const down = new PostgresDb(`postgres://portcullis:s3cret@127.0.0.1:${port}/gone`, { timeout: 2000 })
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-test-'))
  const closed = openDb({ sqlitePath: join(dir, 'closed.db') })
  await closed.close()
  const secrets = keySecretsFromList(f.secrets)
  let source: KeyStore = f.keys
  const keys = {
    activeSigningKey: () => f.keys.activeSigningKey(),
    publicJwks: () => f.keys.publicJwks(),
    list: () => source.list()
  }
  const service = await buildAuthService({
    config: f.config, db: b.db, keys, users: f.users, clients: f.clients, refresh: f.refresh, defaultMetrics: false,
    loggerInstance: f.service.app.log
  })
  t.teardown(async () => {
    await service.close()
    await f.service.close()
    await down.close()
    await b.cleanup()
    rmSync(dir, { recursive: true, force: true })
  })
  t.equal((await service.admin.inject({ url: '/keys' })).statusCode, 200)

  source = new KeyStore(down, { secrets })
  const res = await service.admin.inject({ url: '/keys' })
  t.equal(res.statusCode, 503)
  t.equal(res.headers['retry-after'], '1')
  t.equal(res.headers['cache-control'], 'no-store')
  t.same(res.json(), { statusCode: 503, code: 'PORTCULLIS_STORE_UNAVAILABLE', error: 'Service Unavailable', message: 'the store is unavailable, retry later' })
  t.notMatch(res.body, /s3cret|127\.0\.0\.1|gone|ECONNREFUSED/, 'nothing about the store in the answer')
  const line = f.logs.find((l) => l.event === 'store_unavailable')
  t.ok(line, 'one store_unavailable line')
  t.notMatch(JSON.stringify(line), /s3cret/, 'the logged reason has no password')

  source = new KeyStore(closed, { secrets })
  const other = await service.admin.inject({ url: '/keys' })
  t.equal(other.statusCode, 503, 'any other failed read is a 503 too')
  t.same(other.json(), { statusCode: 503, code: 'PORTCULLIS_KEY_STORE_ERROR', error: 'Service Unavailable', message: 'the key store could not be read' })
  t.ok(f.logs.some((l) => l.event === 'key_store_read_failed'), 'logged')

  source = f.keys
  t.equal((await service.admin.inject({ url: '/keys' })).statusCode, 200, 'answers again once the store is back')
})
