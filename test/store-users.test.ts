import t from 'tap'
import { openClientStore } from '../store/clients.js'
import { PasswordHasher } from '../store/password.js'
import { openRefreshStore } from '../store/refresh.js'
import { openUserStore } from '../store/users.js'
import { testBackends } from './helpers/backends.js'

const cheap = { N: 1024, r: 8, p: 1 }

for (const backend of await testBackends()) {
  t.test(backend.name, { skip: backend.skip }, async (t) => {
    const b = await backend.open()
    t.teardown(() => b.cleanup())

    await t.test('users: add, get, list, verify, remove; usernames case-insensitive and unique', async (t) => {
      const users = await openUserStore(b.db, { hasher: new PasswordHasher({ params: cheap }) })
      await openUserStore(b.db) // migrations are idempotent
      const u = await users.add({ username: ' Jack ', password: 'jack password', role: 'admin', permissions: ['orders:read', 'orders:read', 'orders:*'] })
      t.equal(u.username, 'jack')
      t.same(u.permissions, ['orders:read', 'orders:*'], 'deduplicated')
      t.same(await users.get('JACK'), u)
      t.same(await users.getById(u.id), u)
      await t.rejects(users.add({ username: 'jack', password: 'other password' }), { code: 'PORTCULLIS_ACCOUNT_EXISTS', statusCode: 409 })
      t.same((await users.verify('Jack', 'jack password'))?.id, u.id)
      t.equal(await users.verify('jack', 'wrong password'), null)
      t.equal(await users.verify('nobody', 'jack password'), null)
      await users.add({ username: 'kate', password: 'kate password' })
      t.same((await users.list()).map((x) => [x.username, x.role]), [['jack', 'admin'], ['kate', 'user']])
      t.ok(await users.setPassword('kate', 'new kate password'))
      t.equal(await users.verify('kate', 'kate password'), null)
      t.ok(await users.verify('kate', 'new kate password'))
      t.equal(await users.remove('JACK'), u.id)
      t.equal(await users.remove('jack'), null)
      const row = (await b.db.query<{ password_hash: string }>("SELECT password_hash FROM users WHERE username = 'kate'"))[0]!
      t.notMatch(row.password_hash, /kate password/, 'no clear password stored')
    })

    await t.test('users: invalid fields are refused with a clear message', async (t) => {
      const users = await openUserStore(b.db, { hasher: new PasswordHasher({ params: cheap }) })
      const bad: Array<[Parameters<typeof users.add>[0], RegExp]> = [
        [{ username: 'has space', password: 'long enough' }, /username must be/],
        [{ username: '', password: 'long enough' }, /username must be/],
        [{ username: 'x'.repeat(65), password: 'long enough' }, /username must be/],
        [{ username: 'ok', password: 'short' }, /password must be 8 to 1024/],
        [{ username: 'ok', password: 'long enough', role: 'Admin!' }, /role "Admin!"/],
        [{ username: 'ok', password: 'long enough', permissions: ['orders'] }, /permission "orders" must be resource:action/]
      ]
      for (const [input, msg] of bad) await t.rejects(users.add(input), { code: 'PORTCULLIS_INVALID_ACCOUNT', message: msg })
      t.equal(await users.get('ok'), null, 'nothing stored')
    })

    await t.test('users: a hash with old parameters is upgraded at the next successful verify', async (t) => {
      const weak = await openUserStore(b.db, { hasher: new PasswordHasher({ params: { N: 512, r: 8, p: 1 } }) })
      await weak.add({ username: 'leo', password: 'leo password' })
      const users = await openUserStore(b.db, { hasher: new PasswordHasher({ params: cheap }) })
      const hash = async (): Promise<string> => (await b.db.query<{ password_hash: string }>("SELECT password_hash FROM users WHERE username = 'leo'"))[0]!.password_hash
      t.match(await hash(), /^scrypt\$512\$/)
      t.equal(await users.verify('leo', 'wrong password'), null)
      t.match(await hash(), /^scrypt\$512\$/, 'a failed login changes nothing')
      t.ok(await users.verify('leo', 'leo password'))
      t.match(await hash(), /^scrypt\$1024\$8\$1\$/, 'raised to the current parameters')
      t.ok(await users.verify('leo', 'leo password'), 'and still verifies')
    })

    await t.test('clients: the secret is returned once, stored hashed, verified in constant time', async (t) => {
      const clients = await openClientStore(b.db)
      const { client, clientSecret } = await clients.add({ clientId: 'svc-x', scopes: ['a', 'b:read'], audience: 'x-api' })
      t.match(clientSecret, /^[A-Za-z0-9_-]{43}$/)
      t.same(client.scopes, ['a', 'b:read'])
      t.same((await clients.verify('svc-x', clientSecret))?.audience, 'x-api')
      t.equal(await clients.verify('svc-x', clientSecret + 'x'), null)
      t.equal(await clients.verify('svc-y', clientSecret), null)
      await t.rejects(clients.add({ clientId: 'svc-x' }), { code: 'PORTCULLIS_ACCOUNT_EXISTS' })
      await t.rejects(clients.add({ clientId: 'Bad Id' }), { code: 'PORTCULLIS_INVALID_ACCOUNT' })
      await t.rejects(clients.add({ scopes: ['bad"scope'] }), /not a valid scope token/)
      const generated = await clients.add({})
      t.match(generated.client.clientId, /^svc-[0-9a-f]{12}$/)
      t.same((await clients.list()).map((c) => c.clientId).sort(), [generated.client.clientId, 'svc-x'].sort())
      t.ok(await clients.remove('svc-x'))
      t.equal(await clients.verify('svc-x', clientSecret), null)
    })

    await t.test('refresh store: revokeSubject ends every family of a user', async (t) => {
      let now = 1_000_000
      const refresh = await openRefreshStore(b.db, { idleTtl: 60, absoluteTtl: 120, now: () => now })
      const a = await refresh.issue('user-1')
      const c = await refresh.issue('user-1')
      const other = await refresh.issue('user-2')
      t.equal(await refresh.revokeSubject('user-1'), 2)
      t.same((await refresh.rotate(a.token)).ok, false)
      t.same(await refresh.rotate(c.token), { ok: false, reason: 'revoked', familyId: c.familyId, subject: 'user-1' })
      t.equal((await refresh.rotate(other.token)).ok, true)
      t.same(await refresh.rotate('never-issued'), { ok: false, reason: 'unknown' })
      now += 121_000
      t.equal(await refresh.prune(), 3)
      t.equal((await b.db.query('SELECT * FROM refresh_tokens')).length, 0, 'tokens of pruned families are gone')
    })
  })
}
