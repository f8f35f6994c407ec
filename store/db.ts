/**
 * The storage backend: one small SQL interface with an SQLite and a PostgreSQL implementation,
 * chosen once at start-up (`openDb`). Area stores (keys, users, clients, refresh tokens) are written
 * against it with `?` placeholders and portable SQL, so every area runs on both engines.
 */
export type Dialect = 'sqlite' | 'postgres'

export type Row = Record<string, unknown>
export type Param = string | number | bigint | boolean | null | Buffer

export interface Queryable {
  readonly dialect: Dialect
  /** Runs a statement and returns its rows (an empty array for statements without rows). */
  query<T extends Row = Row>(sql: string, params?: readonly Param[]): Promise<T[]>
  /** Runs a statement and returns the number of rows it changed. */
  run(sql: string, params?: readonly Param[]): Promise<number>
}

export interface Tx extends Queryable {
  /**
   * Serializes this transaction against every other one taking the same named lock, across
   * processes and machines. PostgreSQL: `pg_advisory_xact_lock`; SQLite: a no-op, because every
   * write transaction is `BEGIN IMMEDIATE` and the database file already serializes writers.
   */
  lock(name: string): Promise<void>
}

/**
 * Where a store is, for the line a command prints and the stack's state file: never a password.
 * PostgreSQL's `schema` is null while it is not known yet (the default before `ready()`), and
 * `legacy` says the schema was found on the connection's search_path rather than configured.
 */
export type StoreLocation =
  | { engine: 'sqlite', path: string }
  | { engine: 'postgres', host: string, port: number, database: string, user: string | null, schema: string | null, legacy: boolean }

export interface Db extends Queryable {
  /**
   * Runs `fn` in one transaction: committed when it resolves, rolled back when it throws.
   * SQLite uses `BEGIN IMMEDIATE` (the write lock is taken up front, waiting up to the busy timeout).
   */
  transaction<T>(fn: (tx: Tx) => Promise<T>): Promise<T>
  /**
   * Connects and settles where the tables are (PostgreSQL: resolves the schema and creates it if
   * needed; SQLite: nothing to do). Every statement waits for it; a failure is retried by the next call.
   */
  ready(): Promise<void>
  /** Idempotent. */
  /**
   * PostgreSQL only: calls `onNotify` for every NOTIFY on `channel` (a dedicated connection,
   * reconnected when lost) until the returned function is called. Undefined on SQLite.
   */
  listen?(channel: string, onNotify: () => void): Promise<() => Promise<void>>
  close(): Promise<void>
  /** A human-readable description with no credentials, for logs. */
  readonly description: string
  /** Where the store is (absolute SQLite path; PostgreSQL host, port, database, user and schema). */
  readonly location: StoreLocation
}

export interface DbOptions {
  /** `postgres://...` selects PostgreSQL; otherwise SQLite at `sqlitePath`. */
  databaseUrl?: string
  /** SQLite file path. @defaultValue `./data/portcullis.db` */
  sqlitePath?: string
  /**
   * PostgreSQL schema to use (created if missing); tests use one schema each. Unset: the default
   * schema, `portcullis` (or an older install's tables on the search_path); null: the connection's
   * search_path as it is, nothing created.
   */
  pgSchema?: string | null
  /** PostgreSQL pool size. @defaultValue 10 */
  pgPoolSize?: number
}

export const DEFAULT_SQLITE_PATH = './data/portcullis.db'

/**
 * Where PostgreSQL tables go unless DATABASE_SCHEMA says otherwise: a schema of their own, so that a
 * database shared with other applications (a `users` table in `public`) cannot clash with them.
 */
export const DEFAULT_PG_SCHEMA = 'portcullis'
/** A schema name as DATABASE_SCHEMA accepts it: a lower-case SQL identifier, used unquoted. */
export const PG_SCHEMA_NAME = /^[a-z_][a-z0-9_]*$/

/** Converts `?` placeholders to PostgreSQL's `$1..$n`, leaving quoted strings alone. */
export function toPgPlaceholders (sql: string): string {
  let n = 0
  let out = ''
  let quote: string | null = null
  for (const ch of sql) {
    if (quote !== null) {
      if (ch === quote) quote = null
      out += ch
    } else if (ch === "'" || ch === '"') {
      quote = ch
      out += ch
    } else if (ch === '?') {
      out += `$${++n}`
    } else {
      out += ch
    }
  }
  return out
}
