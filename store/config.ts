import { existsSync, mkdirSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { envString, envUrl, type Env, type EnvGroup } from '../lib/env.js'
import { ConfigError } from '../lib/errors.js'
import { DEFAULT_PG_SCHEMA, PG_SCHEMA_NAME, type DbOptions } from './db.js'

export const DEFAULT_DATA_DIR = './data'

/** The store settings, read by every process that keeps state (dbOptionsFromEnv). */
export const STORE_ENV: EnvGroup = {
  title: 'store',
  rows: [
    ['DATABASE_URL', 'unset', 'postgres:// URL to use PostgreSQL; unset uses the embedded SQLite file in PORTCULLIS_DATA_DIR'],
    ['DATABASE_SCHEMA', DEFAULT_PG_SCHEMA, `PostgreSQL schema of the tables, a lower-case SQL identifier, created if missing. Unset: ${DEFAULT_PG_SCHEMA}, unless that schema holds no store yet and the connection's search_path finds one (an install made before this default, its tables in public): then that one, as before`],
    ['PORTCULLIS_DATA_DIR', DEFAULT_DATA_DIR, 'folder of the SQLite file (portcullis.db) and of the generated local key secret; created 0700']
  ]
}

/**
 * Store settings shared by every process:
 * - `DATABASE_URL` (postgres://...) selects PostgreSQL; unset means the embedded SQLite file.
 * - `DATABASE_SCHEMA` PostgreSQL schema (default: DEFAULT_PG_SCHEMA, or an older install's tables on
 *   the search_path; PostgresDb settles which).
 * - `PORTCULLIS_DATA_DIR` folder for the SQLite file and the generated local secret (default ./data).
 */
export function dbOptionsFromEnv (env: Env): DbOptions & { dataDir: string } {
  const dataDir = envString(env, 'PORTCULLIS_DATA_DIR', DEFAULT_DATA_DIR)
  const url = envUrl(env, 'DATABASE_URL', ['postgres:', 'postgresql:'])
  const schema = envString(env, 'DATABASE_SCHEMA')
  if (schema !== undefined && !PG_SCHEMA_NAME.test(schema)) {
    throw new ConfigError('DATABASE_SCHEMA', `must be a lower-case SQL identifier (letters, digits, _), got "${schema}"`)
  }
  return {
    dataDir,
    sqlitePath: join(dataDir, 'portcullis.db'),
    ...(url !== undefined ? { databaseUrl: url.toString() } : {}),
    ...(schema !== undefined ? { pgSchema: schema } : {})
  }
}

/**
 * For commands that read or change what is already there (`keys list`, `users remove`...): with the
 * embedded store its file must exist, so a command run from the wrong folder says so instead of
 * quietly creating an empty store (and a new local secret) there.
 */
export function requireExistingStore (opts: DbOptions & { dataDir: string }): void {
  if (opts.databaseUrl !== undefined || opts.sqlitePath === undefined) return
  if (!existsSync(opts.sqlitePath)) {
    throw new ConfigError('PORTCULLIS_DATA_DIR', `no store at ${resolve(opts.sqlitePath)}: run the command from the folder that holds data/, or point PORTCULLIS_DATA_DIR (or DATABASE_URL) at the store`)
  }
}

/**
 * Creates the data folder (and any missing parent) for the owner alone: it holds the store, with
 * password hashes and sealed private keys, and the local key-encryption secret. An existing folder
 * keeps its mode.
 */
export function makeDataDir (dir: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 })
}
