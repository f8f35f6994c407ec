import { DEFAULT_SQLITE_PATH, type Db, type DbOptions } from './db.js'
import { PostgresDb } from './postgres.js'
import { SqliteDb } from './sqlite.js'

export type { Db, DbOptions, Dialect, Param, Queryable, Row, StoreLocation, Tx } from './db.js'
export { migrate, type Component, type Migration } from './migrate.js'

/** Opens the backend the config names: PostgreSQL when `databaseUrl` is set, else the SQLite file. */
export function openDb (opts: DbOptions = {}): Db {
  if (opts.databaseUrl !== undefined && opts.databaseUrl !== '') {
    return new PostgresDb(opts.databaseUrl, {
      ...(opts.pgSchema !== undefined ? { schema: opts.pgSchema } : {}),
      ...(opts.pgPoolSize !== undefined ? { poolSize: opts.pgPoolSize } : {})
    })
  }
  return new SqliteDb(opts.sqlitePath ?? DEFAULT_SQLITE_PATH)
}
