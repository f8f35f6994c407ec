import { execFile, spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { setTimeout as delay } from 'node:timers/promises'
import { promisify } from 'node:util'
import { createRemoteJWKSet, decodeProtectedHeader, jwtVerify } from 'jose'
import t from 'tap'
import { keySecretsFromList } from '../store/crypto.js'
import { KEY_TIMING_ENV } from '../store/key-timings.js'
import { openDb } from '../store/index.js'
import { openKeyStore } from '../store/keys.js'
import { freePorts } from './helpers/ports.js'
import { testBackends } from './helpers/backends.js'

const run = promisify(execFile)
const CLI = fileURLToPath(new URL('../cli/portcullis.ts', import.meta.url))
const CWD = fileURLToPath(new URL('..', import.meta.url))

interface Out { code: number, stdout: string, stderr: string }

async function portcullis (env: Record<string, string>, args: string[], input?: string): Promise<Out> {
  const p = run(process.execPath, ['--import', 'tsx', CLI, ...args], { cwd: CWD, env: { ...process.env, ...env } })
  if (input !== undefined) { p.child.stdin!.end(input) }
  try {
    const { stdout, stderr } = await p
    return { code: 0, stdout, stderr }
  } catch (err) {
    const e = err as { code: number, stdout: string, stderr: string }
    return { code: e.code, stdout: e.stdout, stderr: e.stderr }
  }
}

async function waitFor (url: string, deadline = Date.now() + 15_000): Promise<Response> {
  for (;;) {
    try {
      const res = await fetch(url)
      if (res.ok) return res
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`${url} never answered`)
    await delay(100)
  }
}

for (const backend of await testBackends()) {
  t.test(backend.name, { skip: backend.skip }, async (t) => {
    const b = await backend.open()
    t.teardown(() => b.cleanup())
    const env = { ...b.env, PASSWORD_SCRYPT_N: '1024', PORTCULLIS_KEY_SECRETS: randomBytes(32).toString('base64url'), LOG_LEVEL: 'warn' }

    const added = await portcullis(env, ['users', 'add', 'Nina', '--role', 'admin', '--permissions', 'orders:read,orders:write'])
    t.equal(added.code, 0, added.stderr)
    const password = /password \(shown once\): (\S+)/.exec(added.stdout)?.[1]
    t.ok(password, 'a generated password is printed once')
    // The one-shot commands' own checks run once (on SQLite): each is a process start of about a second.
    const full = backend.name === 'sqlite'
    if (full) {
      t.equal((await portcullis(env, ['users', 'add', 'omar', '--password-stdin'], 'omar password\n')).code, 0)
      const dup = await portcullis(env, ['users', 'add', 'nina'])
      t.same([dup.code, dup.stderr.trim().split('\n').slice(1)], [1, ['portcullis: user "nina" already exists']], 'one line after the one naming the store')
      const badPerm = await portcullis(env, ['users', 'add', 'pia', '--permissions', 'nope'])
      t.match(badPerm.stderr, /permission "nope" must be resource:action/)
      const list = await portcullis(env, ['users', 'list'])
      t.match(list.stdout, /nina\s+\S+\s+admin\s+orders:read,orders:write/)
      t.match(list.stdout, /omar\s+\S+\s+user/)
    }
    const client = await portcullis(env, ['clients', 'add', 'svc-cli', '--scope', 'orders:read products:read'])
    t.equal(client.code, 0, client.stderr)
    const secret = /client_secret=(\S+)/.exec(client.stdout)?.[1]
    t.ok(secret)
    if (full) t.match((await portcullis(env, ['clients', 'list'])).stdout, /svc-cli\s+orders:read products:read\s+\(default\)/)
    t.equal((await portcullis(env, ['keys', 'rotate', '--activate-now'])).code, 0, 'first key (keys CLI)')

    await t.test('portcullis auth: serves logins for CLI-made users; a key activated by another process signs within 5 s', async (t) => {
      const [port, adminPort] = await freePorts(2) as [number, number]
      const issuer = `http://127.0.0.1:${port}`
      const child = spawn(process.execPath, ['--import', 'tsx', CLI, 'auth'], {
        cwd: CWD,
        env: { ...process.env, ...env, AUTH_PORT: String(port), AUTH_ADMIN_PORT: String(adminPort), AUTH_ISSUER: issuer, AUTH_KEY_POLL_INTERVAL: '500ms', AUTH_DRAIN_DELAY: '0' },
        stdio: ['ignore', 'pipe', 'pipe']
      })
      let output = ''
      child.stdout.on('data', (d: Buffer) => { output += d.toString() })
      child.stderr.on('data', (d: Buffer) => { output += d.toString() })
      const exited = once(child, 'exit')
      t.teardown(async () => { if (child.exitCode === null) { child.kill('SIGKILL'); await exited } })
      await waitFor(`http://127.0.0.1:${adminPort}/health/ready`)

      const login = async (): Promise<string> => {
        const res = await fetch(`${issuer}/auth/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ username: 'nina', password }) })
        t.equal(res.status, 200)
        return ((await res.json()) as { access_token: string }).access_token
      }
      const jwks = createRemoteJWKSet(new URL(`${issuer}/.well-known/jwks.json`))
      const first = await login()
      const { payload } = await jwtVerify(first, jwks, { issuer, audience: 'portcullis' })
      t.same(payload.permissions, ['orders:read', 'orders:write'])
      // Polled with client credentials: logins would soon meet the per-username limit.
      const serviceToken = async (): Promise<string> => {
        const res = await fetch(`${issuer}/oauth/token`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams({ grant_type: 'client_credentials', client_id: 'svc-cli', client_secret: secret! }) })
        t.equal(res.status, 200)
        return ((await res.json()) as { access_token: string }).access_token
      }
      await serviceToken()

      const rotated = await portcullis(env, ['keys', 'rotate', '--activate-now'])
      t.equal(rotated.code, 0)
      const newKid = /key (\S+) is active/.exec(rotated.stdout)?.[1]
      // Measured from the activation time the other process recorded in the store, not from its start.
      const keys = await openKeyStore(b.db, { secrets: keySecretsFromList([env.PORTCULLIS_KEY_SECRETS]) })
      const activatedAt = (await keys.list()).find((k) => k.kid === newKid)!.activatedAt!
      let token = await serviceToken()
      while (decodeProtectedHeader(token).kid !== newKid && Date.now() - activatedAt < 10_000) {
        await delay(50)
        token = await serviceToken()
      }
      const elapsed = Date.now() - activatedAt
      t.equal(decodeProtectedHeader(token).kid, newKid, 'the auth process signs with the key the CLI process activated')
      t.ok(elapsed < 5000, `within 5 s of activation (${elapsed} ms)`)
      t.comment(`cross-process key change noticed ${elapsed} ms after activation`)
      const fresh = createRemoteJWKSet(new URL(`${issuer}/.well-known/jwks.json`))
      t.ok(await jwtVerify(first, fresh, { issuer, audience: 'portcullis' }), 'the old token still verifies')
      t.ok(await jwtVerify(token, fresh, { issuer, audience: 'portcullis' }))

      child.kill('SIGTERM')
      const [code] = await exited
      t.equal(code, 0, 'clean exit on SIGTERM')
      t.notMatch(output, new RegExp(password!), 'the password never reaches the log')
    })

    if (!full) return
    const removed = await portcullis(env, ['users', 'remove', 'NINA'])
    t.match(removed.stdout, /removed user nina; revoked [1-9]\d* refresh-token famil(y|ies)/, 'its logins\' refresh tokens are revoked')
    t.equal((await portcullis(env, ['clients', 'remove', 'svc-cli'])).code, 0)
    t.notMatch((await portcullis(env, ['clients', 'list'])).stdout, /svc-cli/)
  })
}

t.test('portcullis auth refuses a bad setting with one line naming it', async (t) => {
  const r = await portcullis({ AUTH_KEY_POLL_INTERVAL: 'often' }, ['auth'])
  t.equal(r.code, 1)
  t.match(r.stderr, /^portcullis: Invalid configuration: AUTH_KEY_POLL_INTERVAL: expected a duration/)
  t.notMatch(r.stderr, /\n\s+at /, 'no stack trace')
  const help = await portcullis({}, ['auth', '--help'])
  t.match(help.stdout, /AUTH_LOGIN_USER_MAX/)
})

t.test('a wrong key-encryption secret at auth start: the store line and the one-line message only, no JSON error line with a stack before it', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-secret-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const sealedWith = randomBytes(32).toString('base64url')
  const db = openDb({ sqlitePath: join(dir, 'portcullis.db') })
  const { kid } = await (await openKeyStore(db, { secrets: keySecretsFromList([sealedWith]) })).rotateNow({ activateNow: true })
  await db.close()
  const [port, adminPort] = await freePorts(2) as [number, number]
  const r = await portcullis({ PORTCULLIS_DATA_DIR: dir, PORTCULLIS_KEY_SECRETS: randomBytes(32).toString('base64url'), AUTH_PORT: String(port), AUTH_ADMIN_PORT: String(adminPort), LOG_LEVEL: 'info' }, ['auth'])
  t.equal(r.code, 1)
  t.equal(r.stdout, '', 'nothing on stdout (it held a level-50 JSON line with the stack)')
  // the store line (which store holds the key), then the one-line error: no JSON, no stack
  const lines = r.stderr.trimEnd().split('\n')
  t.equal(lines.length, 2, `two lines on stderr: ${r.stderr}`)
  t.equal(lines[0], `portcullis: store: SQLite ${join(dir, 'portcullis.db')}`)
  t.notMatch(r.stderr, /\n\s+at /, 'no stack trace')
  t.match(lines[1], new RegExp(`^portcullis: signer: could not read the key store: cannot decrypt private key ${kid}: sealed with secret id [0-9a-f]{12}, which is not among the configured secrets .*PORTCULLIS_KEY_SECRETS`))
})

t.test('help texts list every variable the commands read (regression: auth --help left out KEY_RETIRE_WINDOW and KEY_ROTATION_PERIOD, which it validates)', async (t) => {
  const auth = (await import('../auth/main.js')).help
  const rotation = (await import('../rotation/main.js')).help
  const keys = (await import('../cli/keys.js')).help
  for (const name of Object.values(KEY_TIMING_ENV)) {
    t.match(auth, new RegExp(`\\b${name}\\b`), `auth --help names ${name}`)
    t.match(rotation, new RegExp(`\\b${name}\\b`), `rotation --help names ${name}`)
  }
  t.match(keys, /LOG_LEVEL/, 'keys --help names LOG_LEVEL (default warn)')
  const usage = await portcullis({}, ['--help'])
  t.match(usage.stdout, /DEBUG=1/, 'the top-level usage names DEBUG (stack traces of failed commands)')
})
