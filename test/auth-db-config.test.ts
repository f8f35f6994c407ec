import { execFile, spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as delay } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import t from 'tap'
import { authConfigFromEnv } from '../auth/config.js'
import { keySecretsFromList } from '../store/crypto.js'
import { DEFAULT_KEY_TIMINGS } from '../store/key-timings.js'
import { openKeyStore } from '../store/keys.js'
import { PasswordHasher } from '../store/password.js'
import { PostgresDb } from '../store/postgres.js'
import { openUserStore } from '../store/users.js'
import { TEST_SCRYPT } from './helpers/auth-fixture.js'
import { freePorts } from './helpers/ports.js'
import { privatePostgresSkip, startPrivatePostgres } from './helpers/private-postgres.js'

const CLI = fileURLToPath(new URL('../cli/portcullis.ts', import.meta.url))
const CWD = fileURLToPath(new URL('..', import.meta.url))
const run = promisify(execFile)

t.test('AUTH_DATABASE_TIMEOUT: a duration of at least 100 ms, 2 s by default', async (t) => {
  t.equal(authConfigFromEnv({}, DEFAULT_KEY_TIMINGS).databaseTimeout, 2000)
  t.equal(authConfigFromEnv({ AUTH_DATABASE_TIMEOUT: '1500ms' }, DEFAULT_KEY_TIMINGS).databaseTimeout, 1500)
  t.equal(authConfigFromEnv({ AUTH_DATABASE_TIMEOUT: '5' }, DEFAULT_KEY_TIMINGS).databaseTimeout, 5000)
  t.throws(() => authConfigFromEnv({ AUTH_DATABASE_TIMEOUT: 'soon' }, DEFAULT_KEY_TIMINGS),
    { code: 'PORTCULLIS_CONFIG', message: /^Invalid configuration: AUTH_DATABASE_TIMEOUT: expected a duration/ })
  t.throws(() => authConfigFromEnv({ AUTH_DATABASE_TIMEOUT: '50ms' }, DEFAULT_KEY_TIMINGS),
    { code: 'PORTCULLIS_CONFIG', message: /^Invalid configuration: AUTH_DATABASE_TIMEOUT: must be at least 0.1s/ })
})

t.test('portcullis auth refuses a bad AUTH_DATABASE_TIMEOUT at boot, naming it', async (t) => {
  const dataDir = mkdtempSync(join(tmpdir(), 'portcullis-auth-db-'))
  t.teardown(() => rmSync(dataDir, { recursive: true, force: true }))
  let r: { code: number | null, stderr: string }
  try {
    // Should it boot anyway, it does so on a store and ports of its own, and is killed after 60 s.
    await run(process.execPath, ['--import', 'tsx', CLI, 'auth'], {
      cwd: CWD,
      timeout: 60_000,
      env: { ...process.env, AUTH_DATABASE_TIMEOUT: '0s', PORTCULLIS_DATA_DIR: dataDir, AUTH_PORT: '0', AUTH_ADMIN_PORT: '0' }
    })
    r = { code: 0, stderr: '' }
  } catch (err) {
    r = err as { code: number | null, stderr: string }
  }
  t.equal(r.code, 1)
  t.match(r.stderr, /^portcullis: Invalid configuration: AUTH_DATABASE_TIMEOUT: must be at least 0.1s, got 0s/)
})

t.test('portcullis auth uses AUTH_DATABASE_TIMEOUT on PostgreSQL: a frozen database is a 503 after it, then 200 after SIGCONT', { skip: privatePostgresSkip() }, async (t) => {
  const pgs = await startPrivatePostgres()
  t.teardown(() => pgs.cleanup())
  const dataDir = mkdtempSync(join(tmpdir(), 'portcullis-auth-db-'))
  t.teardown(() => rmSync(dataDir, { recursive: true, force: true }))
  const secret = randomBytes(32).toString('base64url')
  const setupDb = new PostgresDb(pgs.url)
  try {
    await (await openKeyStore(setupDb, { secrets: keySecretsFromList([secret]) })).rotateNow({ activateNow: true })
    await (await openUserStore(setupDb, { hasher: new PasswordHasher({ params: TEST_SCRYPT }) })).add({ username: 'carol', password: 'carol password' })
  } finally {
    await setupDb.close()
  }

  const [port, adminPort] = await freePorts(2) as [number, number]
  const child = spawn(process.execPath, ['--import', 'tsx', CLI, 'auth'], {
    cwd: CWD,
    env: {
      ...process.env,
      DATABASE_URL: pgs.url,
      PORTCULLIS_DATA_DIR: dataDir,
      PORTCULLIS_KEY_SECRETS: secret,
      AUTH_PORT: String(port),
      AUTH_ADMIN_PORT: String(adminPort),
      AUTH_DATABASE_TIMEOUT: '300ms',
      PASSWORD_SCRYPT_N: String(TEST_SCRYPT.N),
      PASSWORD_SCRYPT_P: String(TEST_SCRYPT.p),
      LOG_LEVEL: 'info'
    },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let out = ''
  child.stdout.on('data', (d: Buffer) => { out += d.toString() })
  child.stderr.on('data', (d: Buffer) => { out += d.toString() })
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)))
  t.teardown(async () => {
    pgs.thaw()
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
    await exited
  })
  for (let i = 0; i < 600 && !out.includes('auth service ready'); i++) {
    if (child.exitCode !== null) break
    await delay(100)
  }
  t.match(out, /auth service ready/, 'started')

  const login = async (): Promise<{ status: number, retryAfter: string | null, error?: string }> => {
    try {
      const r = await fetch(`http://127.0.0.1:${port}/auth/login`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ username: 'carol', password: 'carol password' }),
        signal: AbortSignal.timeout(15_000)
      })
      return { status: r.status, retryAfter: r.headers.get('retry-after'), error: ((await r.json()) as { error?: string }).error }
    } catch {
      return { status: 0, retryAfter: null }
    }
  }
  t.equal((await login()).status, 200, 'logged in while the database runs')

  pgs.freeze()
  const frozen = await login()
  t.same(frozen, { status: 503, retryAfter: '1', error: 'temporarily_unavailable' }, 'a login on the frozen database')
  for (let i = 0; i < 50 && !out.includes('store_unavailable'); i++) await delay(100)
  t.match(out, /"event":"store_unavailable"[^\n]*no (answer|connection) within 300 ms/, 'it waited AUTH_DATABASE_TIMEOUT (the log says so)')
  pgs.thaw()

  let status = 0
  for (let i = 0; i < 100 && status !== 200; i++) {
    status = (await login()).status
    if (status !== 200) await delay(200)
  }
  t.equal(status, 200, 'recovered without a restart')
  child.kill('SIGTERM')
  t.equal(await exited, 0, 'stops cleanly')
})
