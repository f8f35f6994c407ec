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

export interface Db extends Queryable {
  /**
   * Runs `fn` in one transaction: committed when it resolves, rolled back when it throws.
   * SQLite uses `BEGIN IMMEDIATE` (the write lock is taken up front, waiting up to the busy timeout).
   */
  transaction<T>(fn: (tx: Tx) => Promise<T>): Promise<T>
  /** Idempotent. */
  close(): Promise<void>
  /** A human-readable description with no credentials, for logs. */
  readonly description: string
}

export interface DbOptions {
  /** `postgres://...` selects PostgreSQL; otherwise SQLite at `sqlitePath`. */
  databaseUrl?: string
  /** SQLite file path. @defaultValue `./data/portcullis.db` */
  sqlitePath?: string
  /** PostgreSQL schema to use (created if missing); tests use one schema each. */
  pgSchema?: string
  /** PostgreSQL pool size. @defaultValue 10 */
  pgPoolSize?: number
}

export const DEFAULT_SQLITE_PATH = './data/portcullis.db'

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
