import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { chownSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as delay } from 'node:timers/promises'
import pg from 'pg'
import { freePort } from './ports.js'

/**
 * A PostgreSQL server of the test's own (initdb + postgres in a temp folder, on a free port of
 * 127.0.0.1), for tests and drills that stop, kill or freeze their database. The machine's shared
 * server (TEST_DATABASE_URL) is never touched.
 *
 * PostgreSQL refuses to run as root: as root, initdb and postgres run as `nobody` (setpriv, which
 * execs, so the child's pid is the postmaster's; else runuser), the temp folder chowned to it.
 * Signals go to the postmaster and to each of its children: PostgreSQL puts every backend in a
 * session of its own (setsid), so a signal to the postmaster's process group would miss them, and a
 * frozen postmaster alone would still serve the connections a pool already holds.
 */

export interface PostgresBinaries { initdb: string, postgres: string }

/** Where the server binaries are: PATH first, then Debian's /usr/lib/postgresql/<version>/bin (newest first). */
export function findPostgresBinaries (): PostgresBinaries | null {
  const dirs = (process.env.PATH ?? '').split(':').filter((d) => d !== '')
  const debian = '/usr/lib/postgresql'
  if (existsSync(debian)) {
    const versions = readdirSync(debian).filter((v) => /^\d+(\.\d+)?$/.test(v)).sort((a, b) => Number(b) - Number(a))
    dirs.push(...versions.map((v) => join(debian, v, 'bin')))
  }
  for (const d of dirs) {
    const initdb = join(d, 'initdb')
    const postgres = join(d, 'postgres')
    if (existsSync(initdb) && existsSync(postgres)) return { initdb, postgres }
  }
  return null
}

/** Pids whose parent is `pid` (Linux /proc). */
function childrenOf (pid: number): number[] {
  const out: number[] = []
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    try {
      // pid (comm) state ppid ...: comm may hold spaces and parentheses, so read after the last ')'.
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8')
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1])
      if (ppid === pid) out.push(Number(entry))
    } catch { /* exited meanwhile */ }
  }
  return out
}

const RUN_AS = { user: 'nobody', uid: 65534, gid: 65534 }

/** How to run a command as an unprivileged user when we are root: the argv prefix, or [] when not root. */
function dropPrivileges (): string[] | string {
  if (process.getuid?.() !== 0) return []
  const id = spawnSync('id', ['-u', RUN_AS.user], { encoding: 'utf8' })
  if (id.status !== 0) return `running as root and there is no "${RUN_AS.user}" user to run PostgreSQL as`
  RUN_AS.uid = Number(id.stdout.trim())
  RUN_AS.gid = Number(spawnSync('id', ['-g', RUN_AS.user], { encoding: 'utf8' }).stdout.trim())
  const setpriv = ['setpriv', `--reuid=${RUN_AS.uid}`, `--regid=${RUN_AS.gid}`, '--clear-groups', '--']
  if (spawnSync(setpriv[0]!, [...setpriv.slice(1), 'true']).status === 0) return setpriv
  const runuser = ['runuser', '-u', RUN_AS.user, '--']
  if (spawnSync(runuser[0]!, [...runuser.slice(1), 'true']).status === 0) return runuser
  return `running as root and neither setpriv nor runuser can switch to "${RUN_AS.user}"`
}

let checked: { bins: PostgresBinaries, prefix: string[] } | string | undefined

function check (): { bins: PostgresBinaries, prefix: string[] } | string {
  if (checked !== undefined) return checked
  const bins = findPostgresBinaries()
  const prefix = dropPrivileges()
  if (bins === null) checked = 'PostgreSQL server binaries (initdb, postgres) not found on PATH nor in /usr/lib/postgresql/*/bin'
  else if (typeof prefix === 'string') checked = prefix
  else checked = { bins, prefix }
  return checked
}

/**
 * A skip reason for tests that need a private PostgreSQL, or false when one can be started.
 * With CI=true a missing server is an error, not a skip (as test/helpers/backends.ts does for the shared one).
 */
export function privatePostgresSkip (): string | false {
  const c = check()
  if (typeof c !== 'string') return false
  if (process.env.CI === 'true') throw new Error(`a private PostgreSQL is required when CI=true: ${c}`)
  return `${c} (required only when CI=true)`
}

export interface PrivatePostgres {
  /** postgres://postgres@127.0.0.1:<port>/postgres (trust authentication). */
  readonly url: string
  readonly port: number
  /** The postmaster's pid while it runs. */
  readonly pid: number | undefined
  /** Everything the server printed (the last 64 KiB), for failure messages. */
  log(): string
  /** Fast shutdown (SIGINT: sessions are ended with 57P01, no new connections), then waits for the exit. */
  stop(): Promise<void>
  /** SIGKILL to the postmaster and its backends (a crash); the next start recovers. */
  kill(): Promise<void>
  /** SIGSTOP to the postmaster and its backends: connections are accepted by the kernel, never answered. */
  freeze(): void
  /** SIGCONT: a frozen server runs on. */
  thaw(): void
  /** Starts it again (after stop or kill; stops it first if it runs) on the same data folder and port. */
  restart(): Promise<void>
  /** Kills every process it started and removes its folder; idempotent. */
  cleanup(): Promise<void>
}

export interface PrivatePostgresOptions {
  /** Extra server settings (`-c name=value`). */
  settings?: Record<string, string>
  /** Longest wait for the server to accept queries at each start, ms. @defaultValue 60000 */
  startTimeout?: number
}

/** Initialises a cluster in a new temp folder and starts it; throws (with its output) when it cannot. */
export async function startPrivatePostgres (opts: PrivatePostgresOptions = {}): Promise<PrivatePostgres> {
  const c = check()
  if (typeof c === 'string') throw new Error(`cannot start a private PostgreSQL: ${c}`)
  const { bins, prefix } = c
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-pg-'))
  const dataDir = join(dir, 'data')
  let child: ChildProcess | undefined
  let exited: Promise<void> = Promise.resolve()
  let output = ''
  let cleaned = false
  const append = (d: Buffer): void => {
    output += d.toString()
    if (output.length > 65536) output = output.slice(-65536)
  }
  const alive = (): boolean => child !== undefined && child.exitCode === null && child.signalCode === null
  /** The postmaster's pid: its pid file (under runuser our child is runuser), else our child's. */
  const postmasterPid = (): number | undefined => {
    // Only while our child runs: the file of a killed server names a pid the system may reuse.
    if (!alive()) return undefined
    try {
      const pid = Number(readFileSync(join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[0])
      if (Number.isSafeInteger(pid) && pid > 0 && existsSync(`/proc/${pid}`)) return pid
    } catch { /* not written yet, or removed at exit */ }
    return child!.pid
  }
  /** Sends `signal` to the postmaster (first: a stopped postmaster forks no new backend), then to each child of it. */
  const group = (signal: NodeJS.Signals): void => {
    const pm = postmasterPid()
    if (pm === undefined) return
    const send = (pid: number): void => { try { process.kill(pid, signal) } catch { /* already gone */ } }
    // Listed before the postmaster is signalled (a killed one's children are re-parented at once),
    // and again after (one it forked meanwhile).
    const before = childrenOf(pm)
    send(pm)
    for (const pid of new Set([...before, ...childrenOf(pm)])) send(pid)
    if (child !== undefined && child.pid !== pm && alive()) send(child.pid!)
  }
  const removeDir = (): void => rmSync(dir, { recursive: true, force: true })
  // A test process that exits without its teardown must not leave a server (or its files) behind.
  const onExit = (): void => {
    group('SIGCONT')
    group('SIGKILL')
    try { removeDir() } catch { /* best effort: the killed server may still hold it */ }
  }
  process.on('exit', onExit)

  try {
    if (prefix.length > 0) chownSync(dir, RUN_AS.uid, RUN_AS.gid)
    const init = spawnSync(prefix[0] ?? bins.initdb, [...prefix.slice(1), ...(prefix.length > 0 ? [bins.initdb] : []),
      '-D', dataDir, '-U', 'postgres', '--auth=trust', '--no-sync', '-E', 'UTF8', '--no-instructions'], { cwd: dir, encoding: 'utf8' })
    if (init.status !== 0) throw new Error(`initdb failed (${init.status ?? init.signal}): ${init.stderr}${init.stdout}`)
  } catch (err) {
    process.off('exit', onExit)
    removeDir()
    throw err
  }

  const port = await freePort()
  const url = `postgres://postgres@127.0.0.1:${port}/postgres`
  const settings: Record<string, string> = {
    listen_addresses: '127.0.0.1',
    port: String(port),
    unix_socket_directories: dir,
    fsync: 'off',
    full_page_writes: 'off',
    synchronous_commit: 'off',
    shared_buffers: '16MB',
    max_connections: '60',
    ...opts.settings
  }
  const args = Object.entries(settings).flatMap(([k, v]) => ['-c', `${k}=${v}`])

  const accepting = async (): Promise<boolean> => {
    const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 1000 })
    client.on('error', () => {})
    try {
      await client.connect()
      await client.query('SELECT 1')
      return true
    } catch {
      return false
    } finally {
      await client.end().catch(() => {})
    }
  }

  const start = async (): Promise<void> => {
    const argv = [...prefix, bins.postgres, '-D', dataDir, ...args]
    // Not detached: a drill or test killed with its process group takes the postmaster with it.
    const proc = spawn(argv[0]!, argv.slice(1), { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] })
    child = proc
    proc.stdout!.on('data', append)
    proc.stderr!.on('data', append)
    exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()))
    const deadline = Date.now() + (opts.startTimeout ?? 60_000)
    for (;;) {
      if (proc.exitCode !== null || proc.signalCode !== null) throw new Error(`postgres exited (${proc.exitCode ?? proc.signalCode}) before accepting connections:\n${output}`)
      if (await accepting()) return
      if (Date.now() > deadline) throw new Error(`postgres on port ${port} did not accept connections within ${opts.startTimeout ?? 60_000} ms:\n${output}`)
      await delay(100)
    }
  }

  /** Waits for the exit; past `ms` the whole group is killed. */
  const waitExit = async (ms: number): Promise<void> => {
    const timer = setTimeout(() => { group('SIGCONT'); group('SIGKILL') }, ms)
    await exited
    clearTimeout(timer)
  }

  const pgServer: PrivatePostgres = {
    url,
    port,
    get pid () { return alive() ? child!.pid : undefined },
    log: () => output,
    stop: async () => {
      if (!alive()) return
      group('SIGCONT')
      const pm = postmasterPid()
      if (pm !== undefined) { try { process.kill(pm, 'SIGINT') } catch { /* gone */ } }
      await waitExit(30_000)
    },
    kill: async () => {
      group('SIGCONT')
      group('SIGKILL')
      await exited
    },
    freeze: () => group('SIGSTOP'),
    thaw: () => group('SIGCONT'),
    restart: async () => {
      await pgServer.stop()
      await start()
    },
    cleanup: async () => {
      if (cleaned) return
      cleaned = true
      group('SIGCONT')
      group('SIGKILL')
      await exited
      process.off('exit', onExit)
      removeDir()
    }
  }
  try {
    await start()
  } catch (err) {
    await pgServer.cleanup()
    throw err
  }
  return pgServer
}
