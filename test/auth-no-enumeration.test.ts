import { scrypt as scryptCb, type ScryptOptions } from 'node:crypto'
import t from 'tap'
import { PasswordHasher, scryptParamsFromEnv, type ScryptFn } from '../store/password.js'
import { authFixture } from './helpers/auth-fixture.js'
import { testBackends } from './helpers/backends.js'

/** A real scrypt that records each call's work parameters (N, r, p, key length, salt length). */
function countingScrypt (): { fn: ScryptFn, calls: string[] } {
  const calls: string[] = []
  const fn: ScryptFn = (password, salt, keyLength, o: ScryptOptions) => {
    calls.push(`N=${o.N} r=${o.r} p=${o.p} keylen=${keyLength} salt=${salt.length}`)
    return new Promise((resolve, reject) => scryptCb(password, salt, keyLength, o, (err, key) => { if (err !== null) reject(err); else resolve(key) }))
  }
  return { fn, calls }
}

for (const backend of await testBackends()) {
  t.test(backend.name, { skip: backend.skip }, async (t) => {
    const b = await backend.open()
    const spy = countingScrypt()
    const f = await authFixture(b, { scrypt: spy.fn, env: { AUTH_LOGIN_USER_MAX: '100' } })
    t.teardown(async () => { await f.service.close(); await b.cleanup() })
    await f.users.add({ username: 'henry', password: 'henry password' })

    const attempt = async (username: string, password: string): Promise<{ calls: string[], status: number, body: string }> => {
      spy.calls.length = 0
      const res = await f.service.app.inject({ method: 'POST', url: '/auth/login', payload: { username, password } })
      return { calls: [...spy.calls], status: res.statusCode, body: res.body }
    }

    const wrong = await attempt('henry', 'not his password')
    const unknown = await attempt('nobody-here', 'not his password')
    const unknownFirstAgain = await attempt('someone-else', 'x')
    const right = await attempt('henry', 'henry password')

    t.equal(right.calls.length, 1, 'a correct password costs one scrypt')
    t.same(wrong.calls, right.calls, 'a wrong password: the same single scrypt with the same parameters')
    t.same(unknown.calls, wrong.calls, 'an unknown user: exactly the same scrypt work as a wrong password')
    t.same(unknownFirstAgain.calls, wrong.calls, 'every unknown user, not only the first')
    t.same([unknown.status, unknown.body], [wrong.status, wrong.body], 'and exactly the same answer')

    await t.test('a user whose stored hash is unreadable costs the same too', async (t) => {
      await f.users.add({ username: 'ivy', password: 'ivy password' })
      await b.db.run("UPDATE users SET password_hash = 'garbage' WHERE username = 'ivy'")
      const broken = await attempt('ivy', 'ivy password')
      t.same([broken.calls, broken.status], [wrong.calls, 401])
    })
  })
}

t.test('hashes carry their parameters; older ones still verify and are upgraded at login', async (t) => {
  const old = new PasswordHasher({ params: { N: 512, r: 8, p: 1 } })
  const current = new PasswordHasher({ params: { N: 1024, r: 8, p: 1 } })
  const h = await old.hash('pw-123456')
  t.match(h, /^scrypt\$512\$8\$1\$[A-Za-z0-9_-]{22}\$[A-Za-z0-9_-]{43}$/)
  t.same(await current.verify('pw-123456', h), { ok: true, needsRehash: true })
  t.same(await current.verify('pw-1234567', h), { ok: false, needsRehash: true })
  t.same(await current.verify('pw-123456', await current.hash('pw-123456')), { ok: true, needsRehash: false })
  t.not(await current.hash('same'), await current.hash('same'), 'salted')
  t.throws(() => new PasswordHasher({ params: { N: 1000, r: 8, p: 1 } }), /power of two/)
  const hostile = 'scrypt$1073741824$8$1$AAAAAAAAAAAAAAAAAAAAAA$' + 'A'.repeat(43)
  t.same(await current.verify('x', hostile), { ok: false, needsRehash: false }, 'absurd stored parameters are not run')
})

t.test('scrypt memory is bounded as a whole, not per parameter (regression: N = 2^20 with r = 32 asked for 4 GiB per hash)', async (t) => {
  t.throws(() => scryptParamsFromEnv({ PASSWORD_SCRYPT_N: '1048576', PASSWORD_SCRYPT_R: '32' }),
    /Invalid configuration: PASSWORD_SCRYPT_R: .*128 \* PASSWORD_SCRYPT_N \* PASSWORD_SCRYPT_R .* 4096 MiB.*1024 MiB/, 'refused at boot, naming the settings')
  t.same(scryptParamsFromEnv({ PASSWORD_SCRYPT_N: '1048576', PASSWORD_SCRYPT_R: '8' }), { N: 1048576, r: 8, p: 3 }, '1 GiB is allowed (p defaults to 3)')
  t.throws(() => new PasswordHasher({ params: { N: 1 << 20, r: 32, p: 1 } }), /1024 MiB/)
  const seen: number[] = []
  const counting = new PasswordHasher({ params: { N: 1024, r: 8, p: 1 }, scrypt: async (_pw, _salt, len, o) => { seen.push(o.N!, o.r!); return Buffer.alloc(len) } })
  const hostile = 'scrypt$1048576$32$1$AAAAAAAAAAAAAAAAAAAAAA$' + 'A'.repeat(43)
  t.same(await counting.verify('x', hostile), { ok: false, needsRehash: false })
  t.same(seen, [1024, 8], 'a stored hash past the bound is not run; the dummy work (current parameters) is')
})
