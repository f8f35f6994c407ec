import { readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import type { DbOptions, StoreLocation } from './index.js'

/**
 * `portcullis start` writes this file into its data folder while it runs: which process it is and
 * which store its children use. A command run against the same data folder (`portcullis users
 * list` in the stack's folder) reads it, and uses the stack's store or refuses (cli/store.ts).
 */
export const STACK_STATE_FILE = 'stack.json'

export interface StackState {
  pid: number
  /** The process's start time as /proc/<pid>/stat gives it, to tell a reused pid apart; null without /proc. */
  startTime: string | null
  startedAt: string
  /** The data folder (absolute). */
  dataDir: string
  /** Where the children's store is; PostgreSQL's schema as the stack resolved it. */
  store: StoreLocation
  /** PostgreSQL: DATABASE_URL without its password (never written to the file). */
  databaseUrl?: string
  /** PostgreSQL: whether DATABASE_URL had a password, which a command then needs in its own DATABASE_URL. */
  databasePassword?: boolean
  /** PostgreSQL: DATABASE_SCHEMA as the stack was given it (unset: the default). */
  databaseSchema?: string
}

/** Field 22 of /proc/<pid>/stat (start time in clock ticks since boot), or null where it cannot be read. */
export function processStartTime (pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    // pid (comm) state ppid ...: comm may hold spaces and parentheses, so count after the last ')'.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? null
  } catch {
    return null
  }
}

/** True when `pid` runs and, where /proc tells, is the process that started at `startTime`. */
export function processAlive (pid: number, startTime: string | null): boolean {
  try {
    process.kill(pid, 0)
  } catch (err) {
    if ((err as { code?: string }).code !== 'EPERM') return false // EPERM: it exists, another user's
  }
  if (startTime === null) return true
  const now = processStartTime(pid)
  return now === null || now === startTime
}

/** The state for a stack on `store` opened from `opts`: the URL's password left out. */
export function stackState (dataDir: string, store: StoreLocation, opts: DbOptions): StackState {
  const state: StackState = { pid: process.pid, startTime: processStartTime(process.pid), startedAt: new Date().toISOString(), dataDir, store }
  if (store.engine === 'postgres' && opts.databaseUrl !== undefined) {
    const u = new URL(opts.databaseUrl)
    state.databasePassword = u.password !== '' || u.searchParams.has('password')
    u.password = ''
    u.searchParams.delete('password')
    state.databaseUrl = u.toString()
    if (typeof opts.pgSchema === 'string') state.databaseSchema = opts.pgSchema
  }
  return state
}

export function writeStackState (state: StackState): void {
  writeFileSync(join(state.dataDir, STACK_STATE_FILE), JSON.stringify(state, null, 2) + '\n', { mode: 0o600 })
}

/** Removes the file if it is this process's (a second stack refused on the folder never removes the first one's). */
export function removeStackState (dataDir: string): void {
  const state = readStackState(dataDir)
  if (state !== undefined && state.pid === process.pid) rmSync(join(dataDir, STACK_STATE_FILE), { force: true })
}

/** The state file of `dataDir`, or undefined when there is none (or it is unreadable: a stack that died while writing it). */
export function readStackState (dataDir: string): StackState | undefined {
  let text: string
  try {
    text = readFileSync(join(dataDir, STACK_STATE_FILE), 'utf8')
  } catch {
    return undefined
  }
  try {
    const s = JSON.parse(text) as StackState
    if (typeof s.pid !== 'number' || typeof s.store !== 'object' || s.store === null) return undefined
    return s
  } catch {
    return undefined
  }
}

/** The state of a stack that runs now on `dataDir`; a file left by one that is gone (killed) is ignored. */
export function runningStack (dataDir: string): StackState | undefined {
  const s = readStackState(dataDir)
  return s !== undefined && processAlive(s.pid, s.startTime) ? s : undefined
}
