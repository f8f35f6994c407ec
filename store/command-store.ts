import { realpathSync } from 'node:fs'
import { basename, dirname, join, resolve } from 'node:path'
import type { Env } from '../lib/env.js'
import { UsageError } from '../lib/errors.js'
import { dbOptionsFromEnv, requireExistingStore } from './config.js'
import { DEFAULT_PG_SCHEMA } from './db.js'
import { openDb, type Db, type DbOptions, type StoreLocation } from './index.js'
import { postgresTarget } from './postgres.js'
import { runningStack, type StackState } from './stack-state.js'

export type StoreOptions = DbOptions & { dataDir: string }

/** One store as a line says it: `SQLite <absolute path>` or `PostgreSQL host:port, database D, schema S, user U`. */
export function describeStore (loc: StoreLocation): string {
  if (loc.engine === 'sqlite') return `SQLite ${loc.path}`
  const host = loc.host.includes(':') ? `[${loc.host}]` : loc.host
  const schema = loc.schema === null
    ? `schema ${DEFAULT_PG_SCHEMA} (or an existing install's on the search_path)`
    : `schema ${loc.schema}${loc.legacy ? ' (an existing install\'s tables, found on the search_path: see "Upgrades" in docs/operations.md)' : ''}`
  return `PostgreSQL ${host}:${loc.port}, database ${loc.database}, ${schema}${loc.user !== null ? `, user ${loc.user}` : ''}`
}

/** Where `opts` points before anything is opened (a PostgreSQL default schema is not settled yet). */
export function plannedLocation (opts: StoreOptions): StoreLocation {
  if (opts.databaseUrl === undefined) return { engine: 'sqlite', path: resolve(opts.sqlitePath ?? `${opts.dataDir}/portcullis.db`) }
  return { engine: 'postgres', ...postgresTarget(opts.databaseUrl), schema: typeof opts.pgSchema === 'string' ? opts.pgSchema : null, legacy: false }
}

/** The same file, however each path reaches its folder (a symlink); a folder that cannot be resolved is taken as given. */
function samePath (a: string, b: string): boolean {
  const real = (p: string): string => { try { return join(realpathSync(dirname(p)), basename(p)) } catch { return p } }
  return a === b || real(a) === real(b)
}

const stackLabel = (s: StackState): string => `the stack running on ${s.dataDir} (pid ${s.pid}, started ${s.startedAt})`

/** True when the command's own settings name the store the stack uses. */
function sameStore (own: StoreOptions, stack: StackState): boolean {
  const mine = plannedLocation(own)
  const theirs = stack.store
  if (mine.engine === 'sqlite' || theirs.engine === 'sqlite') return mine.engine === 'sqlite' && theirs.engine === 'sqlite' && samePath(mine.path, theirs.path)
  if (mine.host !== theirs.host || mine.port !== theirs.port || mine.database !== theirs.database || mine.user !== theirs.user) return false
  // No DATABASE_SCHEMA of its own: the same default the stack resolved, unless the stack was given another schema.
  if (mine.schema === null) return stack.databaseSchema === undefined || theirs.schema === DEFAULT_PG_SCHEMA
  return mine.schema === theirs.schema
}

/**
 * The store a command uses: its own settings (DATABASE_URL, DATABASE_SCHEMA, PORTCULLIS_DATA_DIR),
 * unless a stack (`portcullis start`) runs on the same data folder. Then the command uses the
 * stack's store when its settings name that store, or name no PostgreSQL store while the stack runs
 * on one it can reach without a password; otherwise it refuses, naming both stores.
 */
export function commandStoreOptions (env: Env): { opts: StoreOptions, adoptedFrom: StackState | undefined } {
  const own = dbOptionsFromEnv(env)
  const stack = runningStack(resolve(own.dataDir))
  if (stack === undefined || sameStore(own, stack)) return { opts: own, adoptedFrom: undefined }
  const theirs = stack.store
  if (own.databaseUrl === undefined && theirs.engine === 'postgres' && stack.databaseUrl !== undefined &&
      stack.databasePassword !== true && (own.pgSchema === undefined || own.pgSchema === theirs.schema)) {
    return { opts: { ...own, databaseUrl: stack.databaseUrl, ...(stack.databaseSchema !== undefined ? { pgSchema: stack.databaseSchema } : {}) }, adoptedFrom: stack }
  }
  const how = theirs.engine === 'postgres'
    ? `run it with the stack's DATABASE_URL${stack.databasePassword === true ? ' (with its password)' : ''}${stack.databaseSchema !== undefined ? ` and DATABASE_SCHEMA=${stack.databaseSchema}` : ''}`
    : 'run it without DATABASE_URL'
  throw new UsageError(`${stackLabel(stack)} uses ${describeStore(theirs)}, but this command's settings name ${describeStore(plannedLocation(own))}: ` +
    `${how} to use the stack's store, or point PORTCULLIS_DATA_DIR at another folder to use the other one`)
}

/**
 * Opens the store a command works on (commandStoreOptions) and prints which one it is on stderr, one
 * line, once it is reached (a PostgreSQL default schema is settled then). With `existing`, a missing
 * SQLite file is an error instead of a new empty store.
 */
export async function openCommandStore (env: Env, opts: { existing: boolean }): Promise<{ db: Db, dbOpts: StoreOptions }> {
  const { opts: dbOpts, adoptedFrom } = commandStoreOptions(env)
  if (opts.existing) requireExistingStore(dbOpts)
  const db = openDb(dbOpts)
  try {
    await db.ready()
  } catch (err) {
    await db.close()
    throw err
  }
  printStoreLine(db, adoptedFrom)
  return { db, dbOpts }
}

/** The one stderr line saying which store a command or process works on (once it is reached: a PostgreSQL default schema is settled then). */
export function printStoreLine (db: Db, adoptedFrom?: StackState): void {
  console.error(`portcullis: store: ${describeStore(db.location)}${adoptedFrom !== undefined ? `, the store of ${stackLabel(adoptedFrom)}` : ''}`)
}
