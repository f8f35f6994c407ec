import { mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs'
import { connect, createServer, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { toPgPlaceholders } from '../store/db.js'
import { migrate, openDb } from '../store/index.js'
import { postgresReachable, TEST_DATABASE_URL, testBackends } from './helpers/backends.js'
import { freePort } from './helpers/ports.js'

t.test('toPgPlaceholders numbers ? outside quotes only', async (t) => {
  t.equal(toPgPlaceholders("SELECT ? , '?' , ?"), "SELECT $1 , '?' , $2")
})

for (const b of await testBackends()) {
  t.test(`db adapter on ${b.name}`, { skip: b.skip }, async (t) => {
    const be = await b.open()
    t.teardown(be.cleanup)
    const db = be.db
    await migrate(db, [{
      name: 'demo',
      migrations: [{ version: 1, description: 'demo table', up: ['CREATE TABLE demo (id TEXT PRIMARY KEY, n BIGINT NOT NULL)'] }]
    }])
    // Idempotent: a second migrate run changes nothing.
    await migrate(db, [{
      name: 'demo',
      migrations: [{ version: 1, description: 'demo table', up: ['CREATE TABLE demo (id TEXT PRIMARY KEY, n BIGINT NOT NULL)'] }]
    }])
    await db.run('INSERT INTO demo (id, n) VALUES (?, ?)', ['a', 1_700_000_000_000])
    t.same(await db.query('SELECT id, n FROM demo'), [{ id: 'a', n: 1_700_000_000_000 }])

    await t.rejects(db.transaction(async (tx) => {
      await tx.run('INSERT INTO demo (id, n) VALUES (?, ?)', ['b', 2])
      throw new Error('boom')
    }), /boom/)
    t.equal((await db.query('SELECT id FROM demo')).length, 1, 'rolled back')

    // Concurrent transactions on one handle do not interleave.
    await Promise.all(Array.from({ length: 20 }, (_, i) => db.transaction(async (tx) => {
      await tx.lock('demo')
      const [row] = await tx.query<{ n: number }>('SELECT n FROM demo WHERE id = ?', ['a'])
      await new Promise((r) => setImmediate(r))
      await tx.run('UPDATE demo SET n = ? WHERE id = ?', [Number(row!.n) + 1, 'a'])
      return i
    })))
    const [row] = await db.query<{ n: number }>('SELECT n FROM demo WHERE id = ?', ['a'])
    t.equal(Number(row!.n), 1_700_000_000_020)

    await t.rejects(migrate(db, [{ name: 'demo', migrations: [] }]), /newer than this build/)
  })
}

t.test('an unreachable PostgreSQL store is named in the error (regression: a bare "connect ECONNREFUSED" said nothing about DATABASE_URL)', async (t) => {
  const port = await freePort()
  const db = openDb({ databaseUrl: `postgres://portcullis:hunter2hunter2@127.0.0.1:${port}/test` })
  t.teardown(() => db.close())
  const expected = { code: 'PORTCULLIS_STORE_UNAVAILABLE', message: new RegExp(`^cannot reach the PostgreSQL store \\(DATABASE_URL\\) postgres://portcullis:\\*\\*\\*@127\\.0\\.0\\.1:${port}/test \\(schema portcullis, or an older install's on the search_path\\): connect ECONNREFUSED`) }
  await t.rejects(db.query('SELECT 1'), expected, 'query')
  await t.rejects(db.run('SELECT 1'), expected, 'run')
  await t.rejects(db.transaction(async () => 1), expected, 'transaction')
  const err = await db.query('SELECT 1').catch((e: Error) => e)
  t.notMatch(String((err as Error).message), /hunter2/, 'no password in the message')
})

const pgSkip = await postgresReachable() ? false : `PostgreSQL not reachable at ${TEST_DATABASE_URL}`
t.test('a PostgreSQL database that does not exist is named too; SQL errors are not rewritten', { skip: pgSkip }, async (t) => {
  const missing = openDb({ databaseUrl: TEST_DATABASE_URL.replace(/\/[^/]*$/, '/portcullis_no_such_db') })
  t.teardown(() => missing.close())
  await t.rejects(missing.query('SELECT 1'), { code: 'PORTCULLIS_STORE_UNAVAILABLE', message: /portcullis_no_such_db.*does not exist/ })
  const db = openDb({ databaseUrl: TEST_DATABASE_URL, pgSchema: null }) // the search_path as it is: nothing created in the shared database
  t.teardown(() => db.close())
  await t.rejects(db.query('SELECT * FROM portcullis_no_such_table'), { code: '42P01' })
})

t.test('several processes opening a new PostgreSQL schema at once all start (regression: CREATE SCHEMA IF NOT EXISTS raced into a unique violation)', { skip: pgSkip }, async (t) => {
  const schema = `t_race_${process.pid}_${Date.now() % 1e6}`
  const dbs = Array.from({ length: 8 }, () => openDb({ databaseUrl: TEST_DATABASE_URL, pgSchema: schema, pgPoolSize: 1 }))
  t.teardown(async () => {
    await Promise.all(dbs.map((d) => d.close()))
    const c = openDb({ databaseUrl: TEST_DATABASE_URL, pgSchema: null })
    await c.run(`DROP SCHEMA IF EXISTS ${schema} CASCADE`)
    await c.close()
  })
  const results = await Promise.allSettled(dbs.map((d) => d.query<{ one: number }>('SELECT 1 AS one')))
  t.same(results.filter((r) => r.status === 'rejected').map((r) => String((r as PromiseRejectedResult).reason)), [], 'every one started')
})

t.test('a PostgreSQL store unreachable when first used works once the server answers (regression: the failed schema set-up was kept and every later statement failed with it)', { skip: pgSkip }, async (t) => {
  const port = await freePort()
  const target = new URL(TEST_DATABASE_URL)
  const url = new URL(TEST_DATABASE_URL)
  url.hostname = '127.0.0.1'
  url.port = String(port)
  const schema = `t_retry_${process.pid}_${Date.now() % 1e6}`
  const db = openDb({ databaseUrl: url.toString(), pgSchema: schema, pgPoolSize: 1 })
  const sockets = new Set<Socket>()
  // Nothing listens on the port yet; then a plain TCP relay to the real server does.
  const relay = createServer((client) => {
    const server = connect(Number(target.port || 5432), target.hostname)
    for (const s of [client, server]) { sockets.add(s); s.on('error', () => {}); s.on('close', () => sockets.delete(s)) }
    client.pipe(server).pipe(client)
  })
  t.teardown(async () => {
    await db.close()
    for (const s of sockets) s.destroy()
    await new Promise<void>((resolve) => relay.close(() => resolve()))
    const c = openDb({ databaseUrl: TEST_DATABASE_URL, pgSchema: null })
    await c.run(`DROP SCHEMA IF EXISTS ${schema} CASCADE`)
    await c.close()
  })
  await t.rejects(db.query('SELECT 1'), { code: 'PORTCULLIS_STORE_UNAVAILABLE' }, 'refused while nothing listens')
  await new Promise<void>((resolve) => relay.listen(port, '127.0.0.1', resolve))
  t.same(await db.query('SELECT current_schema() AS s'), [{ s: schema }], 'the schema is made and used once the server answers')
})

t.test('a new SQLite store is private: directory 0700, database and WAL files 0600 (whatever the umask)', async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'portcullis-perm-'))
  t.teardown(() => rmSync(root, { recursive: true, force: true }))
  const old = process.umask(0o022) // the usual default: files 0644 unless created otherwise
  t.teardown(() => { process.umask(old) })
  const dir = join(root, 'data')
  const db = openDb({ sqlitePath: join(dir, 'portcullis.db') })
  await migrate(db, [{ name: 'perm', migrations: [{ version: 1, description: 'perm table', up: ['CREATE TABLE perm (id TEXT PRIMARY KEY)'] }] }])
  await db.run('INSERT INTO perm (id) VALUES (?)', ['x'])
  const files = readdirSync(dir)
  t.ok(files.includes('portcullis.db-wal'), `a WAL file exists (${files.join(', ')})`)
  t.equal(statSync(dir).mode & 0o777, 0o700, 'data directory')
  for (const f of files) t.equal(statSync(join(dir, f)).mode & 0o777, 0o600, f)
  await db.close()
})
