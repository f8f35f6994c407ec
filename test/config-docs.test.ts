// docs/configuration.md is generated from the env tables in the code (scripts/config-docs.ts). These
// tests fail when (a) the committed document and the generator's output differ, (b) a process reads
// a variable its table does not list, or lists one it does not read, (c) a --help leaves out a
// variable of its table.
import { execFile } from 'node:child_process'
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import Database from 'better-sqlite3'
import pino from 'pino'
import t, { type Test } from 'tap'
import { authSettingsFromEnv } from '../auth/config.js'
import { STACK_CHILD_ENV, type run as runStack } from '../cli/stack.js'
import type { ChildSpec, RunningChild } from '../cli/stack/children.js'
import { settingsFromEnv } from '../gateway/main.js'
import { envString, processEnvRows, type Env, type ProcessEnv } from '../lib/env.js'
import { jwksOptionsFromEnv } from '../lib/jwks-env.js'
import { rotationConfigFromEnv } from '../rotation/config.js'
import { DOCS_PATH, PROCESSES, REGENERATE, renderConfigDocs, routeKeyRows, SHARED_GROUPS } from '../scripts/config-docs.js'
import { SERVICE_KINDS, serviceConfigFromEnv } from '../services/config.js'
import { loadKeySecrets } from '../store/secrets.js'

const run = promisify(execFile)
const quiet = pino({ level: 'silent' })

/** An env object that records every name read from it (`view` records reads of another env too). */
function recorder (target: Record<string, string> = {}): { env: Env, read: Set<string>, view: (e: Env) => Env, stop: () => void } {
  const read = new Set<string>()
  let on = true
  const view = (e: Env): Env => new Proxy(e, {
    get (tg, key, receiver) {
      if (on && typeof key === 'string') read.add(key)
      return Reflect.get(tg, key, receiver) as unknown
    },
    has (tg, key) {
      if (on && typeof key === 'string') read.add(key)
      return Reflect.has(tg, key)
    }
  })
  return { env: view({ ...target }), read, view, stop: () => { on = false } }
}

const namesOf = (p: ProcessEnv): string[] => processEnvRows(p).map(([n]) => n)
const processNamed = (command: string): ProcessEnv => PROCESSES.find((p) => p.command === command)!.env

/** The same sets, or a message naming what is read but not listed and what is listed but not read. */
function compare (t: Test, read: Iterable<string>, table: string[], what: string): void {
  const r = new Set(read)
  const tab = new Set(table)
  t.same({ readButNotInTable: [...r].filter((n) => !tab.has(n)).sort(), inTableButNotRead: [...tab].filter((n) => !r.has(n)).sort() },
    { readButNotInTable: [], inTableButNotRead: [] }, `${what}: the variables its config reader reads are exactly its env table`)
}

t.test('(a) docs/configuration.md is what scripts/config-docs.ts generates', async (t) => {
  const generated = renderConfigDocs()
  let committed = ''
  try {
    committed = readFileSync(DOCS_PATH, 'utf8')
  } catch { /* compared below */ }
  t.ok(committed === generated, `docs/configuration.md is out of date with the env tables in the code; regenerate it: ${REGENERATE}`)

  // the script's own check: exit 1 and the regenerate hint on a stale file, exit 0 on the real one
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-config-docs-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const stale = join(dir, 'configuration.md')
  writeFileSync(stale, generated.replace('| `GATEWAY_PORT` | `8080` |', '| `GATEWAY_PORT` | `8081` |'))
  const failed = await run(process.execPath, ['--import', 'tsx', 'scripts/config-docs.ts', '--check', stale]).then(() => undefined, (err: unknown) => err as { code: number, stderr: string })
  t.equal(failed?.code, 1, '--check exits 1 on a stale file')
  t.match(failed?.stderr, /out of date[\s\S]*node --import tsx scripts\/config-docs\.ts > docs\/configuration\.md[\s\S]*8080[\s\S]*8081/, 'and says how to regenerate it and where it differs')
  writeFileSync(stale, generated)
  const ok = await run(process.execPath, ['--import', 'tsx', 'scripts/config-docs.ts', '--check', stale])
  t.match(ok.stderr, /up to date/, '--check passes on the generated text')
})

t.test('the route file section covers every key of gateway/route-schema.ts', async (t) => {
  const rows = routeKeyRows() // throws when a schema key has no meaning or a documented key is not in the schema
  for (const key of ['issuers[].audience', 'trustProxy', 'routes[].rateLimit.timeWindow', 'breaker.resetTimeout']) {
    t.ok(rows.some((r) => r.path === key), `documents ${key}`)
  }
  t.match(rows.find((r) => r.path === 'routes[].prefix'), { def: 'required' }, 'required keys say so')
  t.match(rows.find((r) => r.path === 'timeouts.connect'), { type: 'duration', def: '`2s`' }, 'defaults come from gateway/config.ts')
})

t.test('(b) the Proxy env records what a reader reads', async (t) => {
  const rec = recorder({ A: '1' })
  t.equal(envString(rec.env, 'A'), '1')
  t.equal(envString(rec.env, 'B'), undefined)
  t.same([...rec.read].sort(), ['A', 'B'], 'set and unset variables alike')
})

t.test('(b) every process reads exactly the variables of its env table', async (t) => {
  t.test('portcullis auth', async (t) => {
    // as auth/main.ts run(): authSettingsFromEnv, then loadKeySecrets when the store opens
    const rec = recorder({ PORTCULLIS_KEY_SECRETS: 'x'.repeat(32) })
    const s = authSettingsFromEnv(rec.env)
    await loadKeySecrets(rec.env, s.db.dataDir, quiet, { create: false })
    compare(t, rec.read, namesOf(processNamed('auth')), 'portcullis auth')
  })
  t.test('portcullis gateway', async (t) => {
    // as gateway/main.ts run(): settingsFromEnv, then createGateway's jwksOptionsFromEnv
    const rec = recorder()
    settingsFromEnv(rec.env)
    jwksOptionsFromEnv(rec.env)
    compare(t, rec.read, namesOf(processNamed('gateway')), 'portcullis gateway')
  })
  t.test('portcullis rotation', async (t) => {
    // as rotation/main.ts run(): rotationConfigFromEnv, then loadKeySecrets
    const rec = recorder({ PORTCULLIS_KEY_SECRETS: 'x'.repeat(32) })
    const cfg = rotationConfigFromEnv(rec.env)
    await loadKeySecrets(rec.env, cfg.db.dataDir, quiet, { create: false })
    compare(t, rec.read, namesOf(processNamed('rotation')), 'portcullis rotation')
  })
  t.test('portcullis services <kind>', async (t) => {
    // one table for the three kinds: the union of what each reads
    const rec = recorder()
    for (const kind of SERVICE_KINDS) serviceConfigFromEnv(kind, rec.env)
    compare(t, rec.read, namesOf(processNamed('services')), 'portcullis services')
  })
  t.test('portcullis start', async (t) => {
    // The stack reads process.env inside run(): run it with process.env recording, the port probes,
    // child processes and readiness polls stubbed, the demo seeded into a temporary store. It stops at
    // the first child: every variable is read before the first one starts.
    const dir = mkdtempSync(join(tmpdir(), 'portcullis-config-docs-'))
    t.teardown(() => rmSync(dir, { recursive: true, force: true }))
    const rec = recorder({ PORTCULLIS_DATA_DIR: dir, PASSWORD_SCRYPT_N: '1024' })
    const realStore = await import('../store/config.js')
    const realChildren = await import('../cli/stack/children.js')
    let started = 0
    // mock keys name the .ts files: that is what the modules resolve to under tsx
    const stack = await t.mockImport<{ run: typeof runStack }>('../cli/stack.js', {
      'node:net': {
        createServer: () => ({ listening: false, once () {}, listen (_port: number, _host: string, cb: () => void) { cb() }, close (cb: () => void) { cb() } })
      },
      // the stack reads the store settings from a copy of its env ({ ...env, PORTCULLIS_DATA_DIR })
      '../store/config.ts': { ...realStore, dbOptionsFromEnv: (e: Env) => realStore.dbOptionsFromEnv(rec.view(e)) },
      '../cli/stack/children.ts': {
        ...realChildren,
        startChild: (spec: ChildSpec): RunningChild => {
          rec.stop()
          started++
          return { spec, proc: { pid: 0, exitCode: null, signalCode: null, kill: () => true } as unknown as RunningChild['proc'], exited: new Promise(() => {}) }
        },
        waitForHttp: async () => { throw new Error('stopped by the test at the first child') },
        stopChildren: async () => {}
      }
    })
    // better-sqlite3 reads NODE_BINDINGS_* when it loads its addon, at the first open: load it now
    new Database(':memory:').close()
    const savedEnv = process.env
    const savedError = console.error
    const tty = Object.getOwnPropertyDescriptor(process.stdout, 'isTTY')
    const lines: string[] = []
    console.error = (...a: unknown[]) => { lines.push(a.join(' ')) }
    // on a terminal, as by hand: NO_COLOR is read only there
    Object.defineProperty(process.stdout, 'isTTY', { value: true, configurable: true })
    let code: number
    try {
      process.env = rec.env as NodeJS.ProcessEnv
      code = await stack.run([])
    } finally {
      process.env = savedEnv
      console.error = savedError
      if (tty === undefined) delete (process.stdout as { isTTY?: boolean }).isTTY
      else Object.defineProperty(process.stdout, 'isTTY', tty)
    }
    t.equal(code, 1, 'stopped at the first child')
    t.equal(started, 1, 'one child was (not really) started')
    t.match(lines.join('\n'), /stopped by the test/)
    compare(t, rec.read, [...namesOf(processNamed('start')), ...STACK_CHILD_ENV.flatMap(([names]) => names)], 'portcullis start')
  })
})

t.test('(b) the source of each process reads no variable outside its table', async (t) => {
  // What the dynamic check above cannot see: a read written outside the config readers (in run(),
  // a server file...). Literal names only: envX(env, 'NAME'), env.NAME, process.env.NAME.
  const READ = [/\benv(?:String|Int|Bool|Enum|List|Duration|Url)\(\s*[\w.]+\s*,\s*'([A-Z][A-Z0-9_]*)'/g, /\benv\.([A-Z][A-Z0-9_]*)\b/g, /\benv\[\s*'([A-Z][A-Z0-9_]*)'\s*\]/g]
  const filesUnder = (dir: string): string[] => readdirSync(dir, { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith('.ts')).map((f) => join(dir, f))
  const sources: Record<string, string[]> = {
    auth: filesUnder('auth'),
    gateway: filesUnder('gateway'),
    rotation: filesUnder('rotation'),
    services: filesUnder('services'),
    start: ['cli/stack.ts', ...filesUnder('cli/stack')]
  }
  for (const [command, files] of Object.entries(sources)) {
    const table = new Set([...namesOf(processNamed(command)), ...(command === 'start' ? STACK_CHILD_ENV.flatMap(([n]) => n) : [])])
    const found = new Set<string>()
    for (const f of files) {
      const text = readFileSync(f, 'utf8')
      for (const re of READ) for (const m of text.matchAll(re)) found.add(m[1]!)
    }
    t.ok(found.size > 0, `${command}: its sources read some variables`)
    t.same([...found].filter((n) => !table.has(n)).sort(), [], `${command}: every variable its sources read by name is in its table`)
  }
})

t.test('one definition per variable: a shared group\'s variable is in no process\'s own table', async (t) => {
  const owners = new Map<string, string>()
  for (const g of SHARED_GROUPS) for (const [n] of g.rows) owners.set(n, g.title)
  for (const p of PROCESSES) {
    t.same(p.env.own.filter(([n]) => owners.has(n)).map(([n]) => `${n} (${owners.get(n)})`), [], `${p.title} reuses the shared groups instead of repeating their rows`)
    t.doesNotThrow(() => processEnvRows(p.env), `${p.title}: each name has one row`)
  }
  const childTables = PROCESSES.filter((p) => p.command !== 'start').flatMap((p) => p.env.own.map(([n]) => n))
  for (const [names] of STACK_CHILD_ENV) {
    for (const n of names) t.ok(childTables.includes(n), `the stack's ${n} is defined in a child's table`)
  }
})

t.test('(c) every variable of a table appears in the process\'s --help', async (t) => {
  const helps = await Promise.all(PROCESSES.map(async (p) => {
    const r = await run(process.execPath, ['bin/portcullis.js', p.command, '--help'], { env: { ...process.env, PORTCULLIS_TSX: '1' } })
    return { p, out: r.stdout }
  }))
  for (const { p, out } of helps) {
    t.match(out, new RegExp(`^Usage: portcullis ${p.command}`), `${p.title} --help`)
    const names = [...namesOf(p.env), ...(p.command === 'start' ? STACK_CHILD_ENV.flatMap(([n]) => n) : [])]
    const missing = names.filter((n) => !new RegExp(`(^|[^A-Z0-9_])${n}([^A-Z0-9_]|$)`, 'm').test(out))
    t.same(missing, [], `${p.title} --help names all ${names.length} variables of its table`)
  }
})
