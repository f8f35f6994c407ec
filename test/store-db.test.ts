import t from 'tap'
import { toPgPlaceholders } from '../store/db.js'
import { migrate } from '../store/index.js'
import { testBackends } from './helpers/backends.js'

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
