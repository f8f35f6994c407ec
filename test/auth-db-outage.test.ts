import { randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import { setTimeout as delay } from 'node:timers/promises'
import Database from 'better-sqlite3'
import t, { type Test } from 'tap'
import { authConfigFromEnv } from '../auth/config.js'
import type { Db } from '../store/db.js'
import { DEFAULT_KEY_TIMINGS } from '../store/key-timings.js'
import { PostgresDb } from '../store/postgres.js'
import { SqliteDb } from '../store/sqlite.js'
import { authFixture, type AuthFixture } from './helpers/auth-fixture.js'
import type { TestBackend } from './helpers/backends.js'
import { privatePostgresSkip, startPrivatePostgres, type PrivatePostgres } from './helpers/private-postgres.js'

// The auth service on a database that goes away: stopped (connections refused), killed, frozen
// (SIGSTOP: connections accepted, never answered) or saturated (every pooled connection busy).
// Each refused request must be 503 temporarily_unavailable with Retry-After from the very first one
// (never 500), within the statement timeout on a frozen server, and the service must recover by
// itself once the database is back. These tests stop and freeze their database: a private one,
// never the shared TEST_DATABASE_URL.

const skip = privatePostgresSkip()

/** Login limits out of the way: these tests log in hundreds of times as one user from one address. */
const ENV = { AUTH_LOGIN_USER_MAX: '1000000', AUTH_LOGIN_IP_MAX: '1000000' }
/** A request with no answer by then is recorded as status 0 (a hung request), not awaited forever. */
const HUNG_AFTER_MS = 15_000

interface Answer { status: number, ms: number, retryAfter: string | undefined, body: Record<string, unknown> }

/** One request to the public app; status 0 when there is no answer within HUNG_AFTER_MS. */
async function call (f: AuthFixture, opts: { url: string, payload: Record<string, unknown>, form?: boolean }): Promise<Answer> {
  const started = performance.now()
  const req = f.service.app.inject({
    method: 'POST',
    url: opts.url,
    ...(opts.form === true
      ? { headers: { 'content-type': 'application/x-www-form-urlencoded' }, payload: new URLSearchParams(opts.payload as Record<string, string>).toString() }
      : { payload: opts.payload })
  }).then((r) => ({
    status: r.statusCode,
    retryAfter: r.headers['retry-after'] as string | undefined,
    body: (r.body === '' ? {} : r.json()) as Record<string, unknown>
  }))
  const hung = delay(HUNG_AFTER_MS, { status: 0, retryAfter: undefined, body: { error: `no answer within ${HUNG_AFTER_MS} ms` } }, { ref: false })
  const r = await Promise.race([req, hung])
  return { ...r, ms: performance.now() - started }
}

const login = (f: AuthFixture): Promise<Answer> => call(f, { url: '/auth/login', payload: { username: 'carol', password: 'carol password' } })
const refresh = (f: AuthFixture, token: string): Promise<Answer> => call(f, { url: '/auth/refresh', payload: { refresh_token: token } })
const logout = (f: AuthFixture, token: string): Promise<Answer> => call(f, { url: '/auth/logout', payload: { refresh_token: token } })
const clientToken = (f: AuthFixture, secret: string): Promise<Answer> =>
  call(f, { url: '/oauth/token', form: true, payload: { grant_type: 'client_credentials', client_id: 'billing', client_secret: secret } })

/** The 503 every refused request must be. */
function assertUnavailable (t: Test, r: Answer, what: string): void {
  t.equal(r.status, 503, `${what}: 503 (got ${r.status} ${JSON.stringify(r.body)} after ${r.ms.toFixed(0)} ms)`)
  t.equal(r.body.error, 'temporarily_unavailable', `${what}: temporarily_unavailable`)
  t.equal(r.retryAfter, '1', `${what}: Retry-After`)
}

/** Logs in until a 200 (the database is back); returns the answers seen meanwhile. */
async function untilLoggedIn (f: AuthFixture, ms = 30_000): Promise<Answer[]> {
  const seen: Answer[] = []
  const deadline = Date.now() + ms
  for (;;) {
    const r = await login(f)
    seen.push(r)
    if (r.status === 200 || Date.now() > deadline) return seen
    await delay(100)
  }
}

interface Setup { f: AuthFixture, db: Db, clientSecret: string }

/** An auth service (in process) on its own schema of the private server, with a user and a client. */
async function setup (t: Test, pgs: PrivatePostgres, opts: { poolSize?: number, timeout?: number } = {}): Promise<Setup> {
  // The store as `portcullis auth` opens it: AUTH_DATABASE_TIMEOUT (its default unless given) is its statement budget.
  const timeout = opts.timeout ?? authConfigFromEnv(ENV, DEFAULT_KEY_TIMINGS).databaseTimeout
  const db = new PostgresDb(pgs.url, { schema: `t_${randomBytes(6).toString('hex')}`, ...opts, timeout })
  const backend = { name: 'postgres', db, env: {}, reopen: () => db, cleanup: async () => {} } satisfies TestBackend
  const f = await authFixture(backend, { env: ENV })
  t.teardown(async () => {
    // Whatever the test left the server in, the service and its pool close only on a live one.
    pgs.thaw()
    await f.service.close()
    await db.close()
  })
  await f.users.add({ username: 'carol', password: 'carol password' })
  const { clientSecret } = await f.clients.add({ clientId: 'billing', scopes: ['invoices:read'] })
  return { f, db, clientSecret }
}

t.test('auth on a PostgreSQL database that goes away', { skip }, async (t) => {
  const pgs = await startPrivatePostgres()
  t.teardown(() => pgs.cleanup())
  const restart = async (): Promise<void> => {
    try {
      await pgs.restart()
    } catch (err) {
      throw new Error(`${(err as Error).message}\n${pgs.log()}`)
    }
  }

  t.test('stopped (refused): 503 with Retry-After from the first request on every route; 200 again after a restart, without restarting auth', async (t) => {
    const { f, clientSecret } = await setup(t, pgs)
    const first = await login(f)
    t.equal(first.status, 200, 'logged in while the database runs')
    const refreshToken = first.body.refresh_token as string

    await pgs.stop()
    assertUnavailable(t, await login(f), 'the first login after the stop')
    assertUnavailable(t, await refresh(f, refreshToken), 'refresh')
    assertUnavailable(t, await logout(f, refreshToken), 'logout')
    assertUnavailable(t, await clientToken(f, clientSecret), 'client_credentials')
    const ready = await f.service.admin.inject({ url: '/health/ready' })
    t.equal(ready.statusCode, 503, '/health/ready says not ready')
    const logged = f.logs.filter((l) => l.event === 'store_unavailable')
    t.ok(logged.length >= 4, 'each refusal is logged as store_unavailable')
    t.match(logged[0]?.reason, /cannot reach the PostgreSQL store .*127\.0\.0\.1/, 'with the store\'s own error')
    t.notOk(f.logs.some((l) => l.msg === 'request failed'), 'no request failed as a 500')

    await restart()
    const after = await untilLoggedIn(f)
    t.equal(after.at(-1)!.status, 200, `200 again after the restart (${after.length} attempt(s))`)
    t.same(after.filter((r) => r.status !== 200 && r.status !== 503), [], 'nothing but 503 before that')
    const refreshed = await refresh(f, refreshToken)
    t.equal(refreshed.status, 200, 'the refresh token refused during the outage was not spent')

    // A crash (SIGKILL to the server and its backends) is the same outage for a client.
    await pgs.kill()
    assertUnavailable(t, await login(f), 'the first login after a crash')
    await restart()
    t.equal((await untilLoggedIn(f)).at(-1)!.status, 200, '200 again after the crash recovery')
  })

  t.test('frozen (SIGSTOP): 503 within the default 2 s statement timeout (at most 2.5 s), not a 500 after 5 s nor no answer; 200 after SIGCONT', async (t) => {
    // AUTH_DATABASE_TIMEOUT's default budget.
    const { f, clientSecret } = await setup(t, pgs)
    // Several pooled connections: each one is a statement that the frozen server never answers.
    const warm = await Promise.all(Array.from({ length: 4 }, () => login(f)))
    t.same(warm.map((r) => r.status), [200, 200, 200, 200], 'logged in while the database runs')

    pgs.freeze()
    const first = await login(f)
    assertUnavailable(t, first, 'the first login on the frozen database')
    t.ok(first.ms <= 2500, `the first login waited ${first.ms.toFixed(0)} ms (<= 2500)`)
    const burst = await Promise.all([login(f), login(f), login(f), clientToken(f, clientSecret), refresh(f, warm[0]!.body.refresh_token as string)])
    for (const [i, r] of burst.entries()) {
      assertUnavailable(t, r, `concurrent request ${i + 1}`)
      t.ok(r.ms <= 2500, `concurrent request ${i + 1} waited ${r.ms.toFixed(0)} ms (<= 2500)`)
    }
    const next = await login(f)
    assertUnavailable(t, next, 'a later login (new connections to the frozen server)')
    t.ok(next.ms <= 2500, `a later login waited ${next.ms.toFixed(0)} ms (<= 2500)`)
    const reasons = f.logs.filter((l) => l.event === 'store_unavailable').map((l) => String(l.reason))
    t.ok(reasons.length >= 7 && reasons.every((r) => /no (answer|connection) within 2000 ms/.test(r)),
      `each refusal is logged: the server did not answer within the timeout (${[...new Set(reasons.map((r) => r.replace(/^.*: /, '')))].join('; ')})`)

    pgs.thaw()
    const after = await untilLoggedIn(f)
    t.equal(after.at(-1)!.status, 200, `200 again after SIGCONT (${after.length} attempt(s))`)
    t.equal((await refresh(f, warm[1]!.body.refresh_token as string)).status, 200, 'refresh works again')
  })

  t.test('pool exhausted (every connection held by a long transaction): 503 after the wait for a connection, 200 once one is free', async (t) => {
    const { f, db } = await setup(t, pgs, { poolSize: 2, timeout: 1000 })
    t.equal((await login(f)).status, 200)
    let release!: () => void
    const gate = new Promise<void>((resolve) => { release = resolve })
    let begun = 0
    const holders = Array.from({ length: 2 }, () => db.transaction(async (tx) => {
      await tx.query('SELECT 1')
      begun++
      await gate
    }))
    t.teardown(async () => { release(); await Promise.allSettled(holders) })
    while (begun < 2) await delay(10)

    assertUnavailable(t, await login(f), 'a login while both connections are held')
    t.match(f.logs.filter((l) => l.event === 'store_unavailable').at(-1)?.reason, /no connection within 1000 ms: .*all 2 pooled connections are busy/,
      'the log names the cause')
    release()
    await Promise.all(holders)
    t.equal((await untilLoggedIn(f)).at(-1)!.status, 200, '200 once the connections are back in the pool')
  })
  t.test('stopped while a transaction waits between two statements (a login writing its refresh token): that transaction fails as store unavailable, the process does not crash', async (t) => {
    const db = new PostgresDb(pgs.url, { timeout: 2000 })
    t.teardown(() => db.close())
    let entered!: () => void
    const inside = new Promise<void>((resolve) => { entered = resolve })
    let proceed!: () => void
    const gate = new Promise<void>((resolve) => { proceed = resolve })
    const tx = db.transaction(async (tx) => {
      await tx.query('SELECT 1')
      entered()
      await gate
      await tx.query('SELECT 2')
    })
    await inside
    // The server ends the idle-in-transaction session (57P01) while no statement is running on it:
    // pg emits that as an 'error' event on the checked-out client, which nothing listened to.
    await pgs.stop()
    await delay(300)
    proceed()
    await t.rejects(tx, { code: 'PORTCULLIS_STORE_UNAVAILABLE' }, 'the next statement fails as store unavailable (503 in auth)')
    await restart()
    t.same(await db.query('SELECT 1 AS one'), [{ one: 1 }], 'the same store works again once the server is back')
  })
})

t.test('SQLite held by another connection (SQLITE_BUSY past the busy timeout): 503 with Retry-After, 200 once released', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-auth-busy-'))
  const path = join(dir, 'portcullis.db')
  const db = new SqliteDb(path, 100)
  const backend = { name: 'sqlite', db, env: {}, reopen: () => db, cleanup: async () => {} } satisfies TestBackend
  const f = await authFixture(backend, { env: ENV })
  const other = new Database(path, { timeout: 100 })
  t.teardown(async () => {
    other.close()
    await f.service.close()
    await db.close()
    rmSync(dir, { recursive: true, force: true })
  })
  await f.users.add({ username: 'carol', password: 'carol password' })
  t.equal((await login(f)).status, 200)

  // Another process holds the write lock: a login reads the user, then cannot write its refresh token.
  other.exec('BEGIN IMMEDIATE')
  assertUnavailable(t, await login(f), 'a login while the file is locked')
  other.exec('COMMIT')
  t.equal((await login(f)).status, 200, '200 once the lock is released')
})
