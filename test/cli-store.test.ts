import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import pg from 'pg'
import t, { type Test } from 'tap'
import { describeStore } from '../store/command-store.js'
import { listeners } from '../cli/stack.js'
import { processAlive, processStartTime, runningStack, STACK_STATE_FILE, stackState, type StackState } from '../store/stack-state.js'
import { DEFAULT_AUTH_ADMIN_PORT, DEFAULT_AUTH_PORT } from '../auth/config.js'
import { DEFAULT_GATEWAY_ADMIN_PORT, DEFAULT_GATEWAY_PORT } from '../gateway/main.js'
import { DEFAULT_METRICS_PORT } from '../rotation/config.js'
import { DEFAULT_ADMIN_PORTS, DEFAULT_PORTS, SERVICE_ADMIN_PORT_VARS, SERVICE_PORT_VARS } from '../services/config.js'
import { openDb } from '../store/index.js'
import { openClientStore } from '../store/clients.js'
import { keySecretsFromList } from '../store/crypto.js'
import { openKeyStore } from '../store/keys.js'
import { openRefreshStore } from '../store/refresh.js'
import { openUserStore } from '../store/users.js'
import { postgresReachable, TEST_DATABASE_URL } from './helpers/backends.js'
import { tempDataDir } from './helpers/stack.js'

const CLI = fileURLToPath(new URL('../cli/portcullis.ts', import.meta.url))
const CWD = fileURLToPath(new URL('..', import.meta.url))

interface Out { code: number | null, stdout: string, stderr: string, lines: string[] }

/** `portcullis <args>` with only `env` (and PATH, HOME): none of this process's store settings leak in. */
async function cli (args: string[], env: Record<string, string>, opts: { cwd?: string } = {}): Promise<Out> {
  const child = spawn(process.execPath, ['--import', 'tsx', CLI, ...args], {
    cwd: opts.cwd ?? CWD,
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', PASSWORD_SCRYPT_N: '1024', ...env },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let stdout = ''
  let stderr = ''
  child.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d })
  child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d })
  const code = await new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)))
  return { code, stdout, stderr, lines: stderr.trim().split('\n').filter((l) => l !== '') }
}

/** A process that is alive for the test's length, to stand for a running stack (its pid in the state file). */
function stand (t: Test): ChildProcess {
  const p = spawn('sleep', ['600'], { stdio: 'ignore' })
  t.teardown(() => { p.kill('SIGKILL') })
  return p
}

/** Writes `dir`/stack.json as a stack with pid `pid` would. */
function writeState (dir: string, state: StackState, pid: number): void {
  writeFileSync(join(dir, STACK_STATE_FILE), JSON.stringify({ ...state, pid, startTime: processStartTime(pid) }))
}

const pgSkip = await postgresReachable() ? false : `PostgreSQL not reachable at ${TEST_DATABASE_URL} (required only when CI=true)`
if (pgSkip !== false && process.env.CI === 'true') throw new Error(`PostgreSQL is required when CI=true but ${TEST_DATABASE_URL} is unreachable`)

const admin = async <T>(fn: (c: pg.Client) => Promise<T>, url = TEST_DATABASE_URL): Promise<T> => {
  const c = new pg.Client({ connectionString: url, connectionTimeoutMillis: 5000 })
  await c.connect()
  try {
    return await fn(c)
  } finally {
    await c.end()
  }
}

/** A database of the test's own on the shared server (as the drills make theirs), dropped at teardown. */
async function freshDatabase (t: Test): Promise<string> {
  const name = `portcullis_t_${randomBytes(5).toString('hex')}`
  await admin((c) => c.query(`CREATE DATABASE ${name}`))
  t.teardown(() => admin((c) => c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)))
  const u = new URL(TEST_DATABASE_URL)
  u.pathname = `/${name}`
  return u.toString()
}

/** A schema of the test's own in the shared test database, dropped at teardown. */
function freshSchema (t: Test): string {
  const schema = `t_${randomBytes(6).toString('hex')}`
  t.teardown(() => admin((c) => c.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`)))
  return schema
}

t.test('every store command names its store on stderr, one line before its work; stdout stays the command\'s own', async (t) => {
  const data = tempDataDir()
  t.teardown(data.remove)
  const env = { PORTCULLIS_DATA_DIR: data.dir, PORTCULLIS_KEY_SECRETS: randomBytes(32).toString('base64url') }
  const line = `portcullis: store: SQLite ${join(data.dir, 'portcullis.db')}`
  const runs = [
    await cli(['users', 'add', 'nina'], env),
    await cli(['clients', 'add', 'svc'], env),
    await cli(['keys', 'rotate'], env)
  ]
  runs.push(...await Promise.all([['users', 'list'], ['users', 'list', '--json'], ['clients', 'list'], ['keys', 'list'], ['keys', 'jwks']].map((a) => cli(a, env))))
  for (const r of runs) {
    t.equal(r.code, 0, r.stderr)
    t.same(r.lines, [line], 'exactly the store line on stderr')
    t.notMatch(r.stdout, /portcullis: store/, 'not on stdout')
  }
  t.same((JSON.parse(runs[4]!.stdout) as Array<{ username: string }>).map((u) => u.username), ['nina'], '--json output is still plain JSON')
  // A failure in the store: the store line, then the one-line error.
  const missing = await cli(['users', 'remove', 'nobody'], env)
  t.same([missing.code, missing.lines], [1, [line, 'portcullis: users remove: no user "nobody"']])
  // A failure before a store is chosen: only the error.
  const bad = await cli(['users', 'list'], { ...env, DATABASE_SCHEMA: 'Bad-Name' })
  t.same([bad.code, bad.lines], [1, ['portcullis: Invalid configuration: DATABASE_SCHEMA: must be a lower-case SQL identifier (letters, digits, _), got "Bad-Name"']])
})

t.test('on PostgreSQL the line names host, port, database, schema and user, never the password', { skip: pgSkip }, async (t) => {
  const schema = freshSchema(t)
  const data = tempDataDir()
  t.teardown(data.remove)
  const u = new URL(TEST_DATABASE_URL)
  u.password = 'hunter2-not-shown' // trust authentication: the password is not checked
  u.searchParams.set('application_name', 'cli-test')
  const r = await cli(['users', 'add', 'nina'], { DATABASE_URL: u.toString(), DATABASE_SCHEMA: schema, PORTCULLIS_DATA_DIR: data.dir })
  t.equal(r.code, 0, r.stderr)
  t.same(r.lines, [`portcullis: store: PostgreSQL ${u.hostname}:${u.port || 5432}, database ${u.pathname.slice(1)}, schema ${schema}, user ${u.username}`])
  t.notMatch(r.stderr + r.stdout, /hunter2/)
  t.notOk(existsSync(join(data.dir, 'portcullis.db')), 'no SQLite file beside it')
})

t.test('a stack\'s state file: its own pid and store, a dead or reused pid is not a running stack', async (t) => {
  const data = tempDataDir()
  t.teardown(data.remove)
  const state = stackState(data.dir, { engine: 'postgres', host: 'db', port: 5432, database: 'app', user: 'gw', schema: 'portcullis', legacy: false },
    { databaseUrl: 'postgres://gw:s3cret@db:5432/app?sslmode=require&password=other', pgSchema: 'portcullis' })
  t.equal(state.pid, process.pid)
  t.equal(state.databaseUrl, 'postgres://gw@db:5432/app?sslmode=require', 'the URL without any password')
  t.equal(state.databasePassword, true)
  t.equal(state.databaseSchema, 'portcullis')
  t.ok(processAlive(process.pid, processStartTime(process.pid)), 'this process is alive')
  t.notOk(processAlive(process.pid, '1'), 'a pid whose start time differs is another process (a reused pid)')
  const sleeper = stand(t)
  writeState(data.dir, state, sleeper.pid!)
  t.equal(runningStack(data.dir)?.pid, sleeper.pid, 'a live stack')
  sleeper.kill('SIGKILL')
  await new Promise((resolve) => sleeper.once('exit', resolve))
  t.equal(runningStack(data.dir), undefined, 'its process is gone: the file is ignored')
  writeFileSync(join(data.dir, STACK_STATE_FILE), '{"pid": 12')
  t.equal(runningStack(data.dir), undefined, 'a half-written file is ignored')
})

t.test('a command on the data folder of a running stack uses the stack\'s store or refuses naming both', async (t) => {
  const data = tempDataDir()
  t.teardown(data.remove)
  const sqlitePath = join(data.dir, 'portcullis.db')
  const stackPid = stand(t).pid!
  writeState(data.dir, stackState(data.dir, { engine: 'sqlite', path: sqlitePath }, { sqlitePath }), stackPid)
  const env = { PORTCULLIS_DATA_DIR: data.dir }

  const same = await cli(['users', 'add', 'nina'], env)
  t.equal(same.code, 0, same.stderr)
  t.same(same.lines, [`portcullis: store: SQLite ${sqlitePath}`], 'its own settings name the stack\'s store: it runs')

  const elsewhere = 'postgres://someone:pw@127.0.0.1:1/elsewhere'
  const refused = await cli(['users', 'list'], { ...env, DATABASE_URL: elsewhere })
  t.equal(refused.code, 1)
  t.equal(refused.lines.length, 1, refused.stderr)
  t.match(refused.lines[0], new RegExp(`^portcullis: the stack running on ${data.dir} \\(pid ${stackPid}, started [^)]+\\) uses SQLite ${sqlitePath}, but this command's settings name PostgreSQL 127\\.0\\.0\\.1:1, database elsewhere, schema portcullis .*, user someone: run it without DATABASE_URL`), 'both stores named')
  t.notMatch(refused.stderr, /pw@/, 'no password')
  const unchanged = await cli(['users', 'list'], env)
  t.match(unchanged.stdout, /^nina\s/m)
})

t.test('beside a stack on PostgreSQL, a command without DATABASE_URL uses that store (it read ./data\'s SQLite file before)', { skip: pgSkip }, async (t) => {
  const schema = freshSchema(t)
  const db = openDb({ databaseUrl: TEST_DATABASE_URL, pgSchema: schema })
  t.teardown(() => db.close())
  await db.ready()
  await (await openUserStore(db)).add({ username: 'pgonly', password: 'a long password' })
  const data = tempDataDir()
  t.teardown(data.remove)
  const stackPid = stand(t).pid!
  writeState(data.dir, stackState(data.dir, db.location, { databaseUrl: TEST_DATABASE_URL, pgSchema: schema }), stackPid)
  const u = new URL(TEST_DATABASE_URL)

  const r = await cli(['users', 'list'], { PORTCULLIS_DATA_DIR: data.dir })
  t.equal(r.code, 0, r.stderr)
  t.match(r.stdout, /^pgonly\s/m, 'the PostgreSQL store\'s user')
  t.same(r.lines, [`portcullis: store: PostgreSQL ${u.hostname}:${u.port || 5432}, database ${u.pathname.slice(1)}, schema ${schema}, user ${u.username}, the store of the stack running on ${data.dir} (pid ${stackPid}, started ${JSON.parse(readFileSync(join(data.dir, STACK_STATE_FILE), 'utf8')).startedAt as string})`])
  t.notOk(existsSync(join(data.dir, 'portcullis.db')), 'no SQLite store was made in the folder')

  // The stack's URL had a password, which is never written down: the command needs its own DATABASE_URL.
  const withPassword = new URL(TEST_DATABASE_URL)
  withPassword.password = 'secret-pass'
  writeState(data.dir, stackState(data.dir, db.location, { databaseUrl: withPassword.toString(), pgSchema: schema }), stackPid)
  t.notMatch(readFileSync(join(data.dir, STACK_STATE_FILE), 'utf8'), /secret-pass/, 'the state file holds no password')
  const refused = await cli(['users', 'list'], { PORTCULLIS_DATA_DIR: data.dir })
  t.equal(refused.code, 1)
  t.match(refused.stderr, new RegExp(`^portcullis: the stack running on ${data.dir} .* uses PostgreSQL .*schema ${schema}.*, but this command's settings name SQLite ${data.dir}/portcullis\\.db: run it with the stack's DATABASE_URL \\(with its password\\) and DATABASE_SCHEMA=${schema} to use the stack's store`))
  const own = await cli(['users', 'list'], { PORTCULLIS_DATA_DIR: data.dir, DATABASE_URL: withPassword.toString(), DATABASE_SCHEMA: schema })
  t.equal(own.code, 0, own.stderr)
  t.match(own.stdout, /^pgonly\s/m, 'with the stack\'s settings it runs')
})

t.test('the stack\'s listener defaults are the processes\' own (it cannot import them)', async (t) => {
  const at = listeners({})
  const port = (v: string): number | undefined => at.get(v)?.port
  t.equal(port('AUTH_PORT'), DEFAULT_AUTH_PORT)
  t.equal(port('AUTH_ADMIN_PORT'), DEFAULT_AUTH_ADMIN_PORT)
  t.equal(port('ROTATION_METRICS_PORT'), DEFAULT_METRICS_PORT)
  t.equal(port('GATEWAY_PORT'), DEFAULT_GATEWAY_PORT)
  t.equal(port('GATEWAY_ADMIN_PORT'), DEFAULT_GATEWAY_ADMIN_PORT)
  for (const k of ['user', 'order', 'product'] as const) {
    t.equal(port(SERVICE_PORT_VARS[k]), DEFAULT_PORTS[k])
    t.equal(port(SERVICE_ADMIN_PORT_VARS[k]), DEFAULT_ADMIN_PORTS[k])
  }
  t.same(at.get('AUTH_ADMIN_PORT'), { host: '127.0.0.1', port: DEFAULT_AUTH_ADMIN_PORT })
  t.same(listeners({ AUTH_HOST: '0.0.0.0', AUTH_ADMIN_HOST: '127.0.0.3' }).get('AUTH_ADMIN_PORT'), { host: '127.0.0.3', port: DEFAULT_AUTH_ADMIN_PORT }, 'auth\'s admin listener where AUTH_ADMIN_HOST puts it')
})

t.test('describeStore', async (t) => {
  t.equal(describeStore({ engine: 'sqlite', path: '/srv/data/portcullis.db' }), 'SQLite /srv/data/portcullis.db')
  t.equal(describeStore({ engine: 'postgres', host: '::1', port: 5433, database: 'app', user: null, schema: 'public', legacy: true }),
    'PostgreSQL [::1]:5433, database app, schema public (an existing install\'s tables, found on the search_path: see "Upgrades" in docs/operations.md)')
})

t.test('PostgreSQL tables live in schema portcullis by default: an unrelated users table in public does not clash (regression: relation "users" already exists)', { skip: pgSkip }, async (t) => {
  const url = await freshDatabase(t)
  await admin(async (c) => {
    await c.query('CREATE TABLE public.users (id SERIAL PRIMARY KEY, email TEXT NOT NULL)')
    await c.query('INSERT INTO public.users (email) VALUES ($1)', ['someone@example.com'])
  }, url)
  const data = tempDataDir()
  t.teardown(data.remove)
  const env = { DATABASE_URL: url, PORTCULLIS_DATA_DIR: data.dir }
  const added = await cli(['users', 'add', 'nina', '--role', 'admin'], env)
  t.equal(added.code, 0, added.stderr)
  t.match(added.lines[0], /^portcullis: store: PostgreSQL .*, schema portcullis, user /, 'the store line names the default schema')
  t.match((await cli(['users', 'list'], env)).stdout, /^nina\s+\S+\s+admin/m)
  await admin(async (c) => {
    t.same((await c.query('SELECT email FROM public.users')).rows, [{ email: 'someone@example.com' }], 'the other application\'s table is untouched')
    t.same((await c.query('SELECT username FROM portcullis.users')).rows, [{ username: 'nina' }], 'ours is in schema portcullis')
    t.same((await c.query("SELECT to_regclass('public.portcullis_schema') AS t")).rows, [{ t: null }], 'nothing of ours in public')
  }, url)
})

t.test('an existing install with its tables in public (made before the default schema) keeps working, and a second store is never picked silently', { skip: pgSkip }, async (t) => {
  const url = await freshDatabase(t)
  // What an older build did without DATABASE_SCHEMA: tables wherever the search_path put them (public).
  const old = openDb({ databaseUrl: url, pgSchema: null })
  await (await openUserStore(old)).add({ username: 'olduser', password: 'a long password' })
  await old.close()
  const data = tempDataDir()
  t.teardown(data.remove)
  const env = { DATABASE_URL: url, PORTCULLIS_DATA_DIR: data.dir }

  const list = await cli(['users', 'list'], env)
  t.equal(list.code, 0, list.stderr)
  t.match(list.stdout, /^olduser\s/m, 'the old users are there')
  t.match(list.lines[0], /, schema public \(an existing install's tables, found on the search_path: see "Upgrades" in docs\/operations\.md\)/)
  t.equal((await cli(['users', 'add', 'newer'], env)).code, 0)
  await admin(async (c) => {
    t.same((await c.query('SELECT username FROM public.users ORDER BY username')).rows.map((r) => r.username), ['newer', 'olduser'], 'new users go where the old ones are')
    t.same((await c.query("SELECT nspname FROM pg_namespace WHERE nspname = 'portcullis'")).rows, [], 'no schema portcullis was made')
  }, url)
  const explicit = await cli(['users', 'list'], { ...env, DATABASE_SCHEMA: 'public' })
  t.match(explicit.stdout, /^olduser\s/m, 'DATABASE_SCHEMA=public names it explicitly')

  // A store in schema portcullis as well (a command given DATABASE_SCHEMA=portcullis): the default refuses to choose.
  t.match((await cli(['users', 'list'], { ...env, DATABASE_SCHEMA: 'portcullis' })).stdout, /no users yet/, 'DATABASE_SCHEMA wins: an empty store')
  const both = await cli(['users', 'list'], env)
  t.equal(both.code, 1)
  t.same(both.lines, [`portcullis: Invalid configuration: DATABASE_SCHEMA: is unset, and both schema portcullis and schema public (on the search_path) of ${url} hold a Portcullis store: set it to the one to use (see "Upgrades" in docs/operations.md)`])
})

t.test('docs/operations.md\'s SQL moves an existing install from public to schema portcullis, and every command follows', { skip: pgSkip }, async (t) => {
  const docs = readFileSync(fileURLToPath(new URL('../docs/operations.md', import.meta.url)), 'utf8')
  const sql = /\*\*PostgreSQL schema\.\*\*[\s\S]*?```sql\n([\s\S]*?)```/.exec(docs)?.[1]
  t.ok(sql, 'the SQL block of "PostgreSQL schema"')
  const url = await freshDatabase(t)
  // Every area of the store, as an older build made it in public.
  const old = openDb({ databaseUrl: url, pgSchema: null })
  await (await openUserStore(old)).add({ username: 'olduser', password: 'a long password' })
  await (await openClientStore(old)).add({ clientId: 'oldclient', scopes: [] })
  await (await openRefreshStore(old)).issue('some-sub')
  await (await openKeyStore(old, { secrets: keySecretsFromList([randomBytes(32).toString('base64url')]) })).rotateNow({ activateNow: true })
  await old.close()
  await admin((c) => c.query(sql!), url)
  await admin(async (c) => {
    t.same((await c.query("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).rows, [], 'nothing of ours left in public')
  }, url)
  const data = tempDataDir()
  t.teardown(data.remove)
  const r = await cli(['users', 'list'], { DATABASE_URL: url, PORTCULLIS_DATA_DIR: data.dir })
  t.equal(r.code, 0, r.stderr)
  t.match(r.stdout, /^olduser\s/m)
  t.match(r.lines[0], /, schema portcullis, user /, 'found in schema portcullis, no longer an existing install\'s public')
})

t.test('the stack\'s folder reached through a symlink is the same store', async (t) => {
  const data = tempDataDir()
  t.teardown(data.remove)
  const real = join(data.dir, 'real')
  const linked = join(data.dir, 'linked')
  mkdirSync(real)
  symlinkSync(real, linked)
  const sqlitePath = join(real, 'portcullis.db')
  writeState(real, stackState(real, { engine: 'sqlite', path: sqlitePath }, { sqlitePath }), stand(t).pid!)
  const r = await cli(['users', 'add', 'nina'], { PORTCULLIS_DATA_DIR: linked })
  t.equal(r.code, 0, r.stderr)
  t.same(r.lines, [`portcullis: store: SQLite ${join(linked, 'portcullis.db')}`])
})

t.test('portcullis rotation --once and portcullis auth name their store on stderr too, and refuse beside a stack on another store', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-procstore-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const once = spawnSync(process.execPath, ['--import', 'tsx', 'cli/portcullis.ts', 'rotation', '--once'], { env: { PATH: process.env.PATH ?? '', PORTCULLIS_DATA_DIR: dir, LOG_LEVEL: 'warn' }, encoding: 'utf8', timeout: 60_000 })
  t.equal(once.status, 0, String(once.stderr))
  t.match(String(once.stderr), new RegExp(`^portcullis: store: SQLite ${join(dir, 'portcullis.db').replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}`, 'm'))
  // a stack's state file in the folder naming PostgreSQL, held by a live process (this one): the SQLite settings are refused
  writeFileSync(join(dir, STACK_STATE_FILE), JSON.stringify(stackState(dir, { engine: 'postgres', host: '127.0.0.1', port: 5432, database: 'elsewhere', user: 'postgres', schema: 'portcullis', legacy: false }, { databaseUrl: 'postgres://postgres:secret@127.0.0.1:5432/elsewhere' })))
  for (const args of [['rotation', '--once'], ['auth']]) {
    const r = spawnSync(process.execPath, ['--import', 'tsx', 'cli/portcullis.ts', ...args], { env: { PATH: process.env.PATH ?? '', PORTCULLIS_DATA_DIR: dir, LOG_LEVEL: 'warn', AUTH_PORT: '0', AUTH_ADMIN_PORT: '0' }, encoding: 'utf8', timeout: 60_000 })
    t.equal(r.status, 1, `${args.join(' ')}: refused`)
    t.match(String(r.stderr), /the stack running on .* uses PostgreSQL 127\.0\.0\.1:5432, database elsewhere.*but this command's settings name SQLite/, `${args.join(' ')}: names both stores`)
  }
})
