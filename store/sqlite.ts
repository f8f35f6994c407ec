import { closeSync, openSync } from 'node:fs'
import { dirname, resolve } from 'node:path'
import Database from 'better-sqlite3'
import { makeDataDir } from './config.js'
import type { Db, Param, Row, StoreLocation, Tx } from './db.js'

/** Waits this long for another process's write lock before SQLITE_BUSY. */
export const DEFAULT_BUSY_TIMEOUT_MS = 10_000

function toSqlite (p: Param): unknown {
  return typeof p === 'boolean' ? (p ? 1 : 0) : p
}

/**
 * SQLite backend (better-sqlite3, WAL). One connection per process: transactions are queued by an
 * in-process mutex so that async work inside one never interleaves with another's statements.
 */
export class SqliteDb implements Db {
  readonly dialect = 'sqlite' as const
  readonly description: string
  readonly location: StoreLocation
  #db: Database.Database
  #queue: Promise<unknown> = Promise.resolve()
  #inTx = false
  #closed = false

  constructor (path: string, busyTimeoutMs = DEFAULT_BUSY_TIMEOUT_MS) {
    if (path !== ':memory:') {
      // The store holds password hashes, refresh-token hashes and sealed private keys: a new data
      // directory is the owner's alone, and a new database file is created 0600 before SQLite opens
      // it (SQLite gives its -wal and -shm files the database file's permissions).
      makeDataDir(dirname(path))
      closeSync(openSync(path, 'a', 0o600))
    }
    this.#db = new Database(path, { timeout: busyTimeoutMs })
    this.#db.pragma('journal_mode = WAL')
    this.#db.pragma('synchronous = NORMAL')
    this.#db.pragma('foreign_keys = ON')
    const abs = path === ':memory:' ? path : resolve(path)
    this.location = { engine: 'sqlite', path: abs }
    this.description = `sqlite:${abs}`
  }

  /** The file is open from the constructor on. */
  async ready (): Promise<void> {}

  #exec<T extends Row> (sql: string, params: readonly Param[]): T[] {
    const stmt = this.#db.prepare(sql)
    const args = params.map(toSqlite)
    if (stmt.reader) return stmt.all(...args) as T[]
    stmt.run(...args)
    return []
  }

  #change (sql: string, params: readonly Param[]): number {
    return this.#db.prepare(sql).run(...params.map(toSqlite)).changes
  }

  /** Statements outside a transaction wait for a running transaction to finish first. */
  async #outside<T> (fn: () => T): Promise<T> {
    if (this.#inTx) await this.#queue.catch(() => {})
    return fn()
  }

  async query<T extends Row = Row> (sql: string, params: readonly Param[] = []): Promise<T[]> {
    return await this.#outside(() => this.#exec<T>(sql, params))
  }

  async run (sql: string, params: readonly Param[] = []): Promise<number> {
    return await this.#outside(() => this.#change(sql, params))
  }

  transaction<T> (fn: (tx: Tx) => Promise<T>): Promise<T> {
    const next = this.#queue.catch(() => {}).then(async () => {
      this.#inTx = true
      const tx: Tx = {
        dialect: 'sqlite',
        query: async <R extends Row = Row>(sql: string, params: readonly Param[] = []) => this.#exec<R>(sql, params),
        run: async (sql: string, params: readonly Param[] = []) => this.#change(sql, params),
        lock: async () => {}
      }
      try {
        // Inside the try: a BEGIN that times out (SQLITE_BUSY) must still clear the in-transaction flag.
        this.#db.exec('BEGIN IMMEDIATE')
        const result = await fn(tx)
        this.#db.exec('COMMIT')
        return result
      } catch (err) {
        if (this.#db.inTransaction) this.#db.exec('ROLLBACK')
        throw err
      } finally {
        this.#inTx = false
      }
    })
    this.#queue = next
    return next
  }

  async close (): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    await this.#queue.catch(() => {})
    this.#db.close()
  }
}
