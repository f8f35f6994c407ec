import { createHash } from 'node:crypto'
import pg from 'pg'
import { toPgPlaceholders, type Db, type Param, type Row, type Tx } from './db.js'
import { isConnectionProblem, StoreUnavailableError } from './db-errors.js'

export const DEFAULT_PG_POOL_SIZE = 10

// BIGINT (int8) columns hold millisecond timestamps: return them as numbers, not strings.
pg.types.setTypeParser(20, (v: string) => Number(v))

function lockKey (name: string): string {
  // pg_advisory_xact_lock takes a signed 64-bit key; derive a stable one from the name.
  return createHash('sha256').update(name).digest().readBigInt64BE(0).toString()
}

function redactUrl (url: string): string {
  try {
    const u = new URL(url)
    if (u.password !== '') u.password = '***'
    return u.toString()
  } catch {
    return 'postgres:(unparseable url)'
  }
}

/** PostgreSQL backend (pg pool). */
export class PostgresDb implements Db {
  readonly dialect = 'postgres' as const
  readonly description: string
  #pool: pg.Pool
  #closed = false
  #ready: Promise<void>

  constructor (url: string, opts: { schema?: string, poolSize?: number } = {}) {
    const schema = opts.schema
    if (schema !== undefined && !/^[a-z_][a-z0-9_]*$/.test(schema)) {
      throw new Error(`invalid PostgreSQL schema name "${schema}"`)
    }
    this.#pool = new pg.Pool({
      connectionString: url,
      max: opts.poolSize ?? DEFAULT_PG_POOL_SIZE,
      connectionTimeoutMillis: 5000,
      ...(schema !== undefined ? { options: `-c search_path=${schema}` } : {})
    })
    // An idle client losing its connection must not crash the process; the next query reconnects.
    this.#pool.on('error', () => {})
    this.description = redactUrl(url) + (schema !== undefined ? ` (schema ${schema})` : '')
    this.#ready = schema === undefined
      ? Promise.resolve()
      : this.#pool.query(`CREATE SCHEMA IF NOT EXISTS ${schema}`).then(() => {}, (err: unknown) => {
        // Two processes creating the same new schema at once: IF NOT EXISTS does not cover the race,
        // the loser gets a unique violation (pg_namespace) or duplicate_schema, and the schema exists.
        const code = (err as { code?: unknown }).code
        if (code === '23505' || code === '42P06') return
        throw this.#named(err)
      })
    this.#ready.catch(() => {})
  }

  /** A failure to reach the server becomes one error naming the store (its password redacted); SQL errors pass unchanged. */
  #named (err: unknown): unknown {
    if (!isConnectionProblem(err)) return err
    const named = new StoreUnavailableError(this.description, (err as Error).message)
    named.cause = err
    return named
  }

  async query<T extends Row = Row> (sql: string, params: readonly Param[] = []): Promise<T[]> {
    await this.#ready
    try {
      const res = await this.#pool.query(toPgPlaceholders(sql), params as unknown[])
      return res.rows as T[]
    } catch (err) {
      throw this.#named(err)
    }
  }

  async run (sql: string, params: readonly Param[] = []): Promise<number> {
    await this.#ready
    try {
      const res = await this.#pool.query(toPgPlaceholders(sql), params as unknown[])
      return res.rowCount ?? 0
    } catch (err) {
      throw this.#named(err)
    }
  }

  async transaction<T> (fn: (tx: Tx) => Promise<T>): Promise<T> {
    await this.#ready
    let client: pg.PoolClient
    try {
      client = await this.#pool.connect()
    } catch (err) {
      throw this.#named(err)
    }
    const tx: Tx = {
      dialect: 'postgres',
      query: async <R extends Row = Row>(sql: string, params: readonly Param[] = []) =>
        (await client.query(toPgPlaceholders(sql), params as unknown[])).rows as R[],
      run: async (sql: string, params: readonly Param[] = []) =>
        (await client.query(toPgPlaceholders(sql), params as unknown[])).rowCount ?? 0,
      lock: async (name: string) => {
        await client.query('SELECT pg_advisory_xact_lock($1::bigint)', [lockKey(name)])
      }
    }
    let broken = false
    try {
      await client.query('BEGIN')
      const result = await fn(tx)
      await client.query('COMMIT')
      return result
    } catch (err) {
      try {
        await client.query('ROLLBACK')
      } catch {
        broken = true
      }
      throw err
    } finally {
      client.release(broken)
    }
  }

  async close (): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    await this.#pool.end()
  }
}
