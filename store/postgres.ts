import { createHash } from 'node:crypto'
import { performance } from 'node:perf_hooks'
import pg from 'pg'
import { DEFAULT_PG_SCHEMA, PG_SCHEMA_NAME, toPgPlaceholders, type Db, type Param, type Row, type StoreLocation, type Tx } from './db.js'
import { ConfigError } from '../lib/errors.js'
import { isConnectionProblem, StoreUnavailableError } from './db-errors.js'

export const DEFAULT_PG_POOL_SIZE = 10
/** Without a statement budget: the longest wait for a pooled or new connection, ms. */
export const DEFAULT_PG_CONNECT_TIMEOUT = 5000

export interface PostgresOptions {
  /**
   * Schema to use, created if missing (a name PG_SCHEMA_NAME accepts). Unset: DEFAULT_PG_SCHEMA, unless it holds no store yet and
   * the connection's search_path does (an install from before the default schema, its tables in
   * `public`): then that schema. null: the connection's search_path as it is, nothing created.
   */
  schema?: string | null
  /** @defaultValue DEFAULT_PG_POOL_SIZE */
  poolSize?: number
  /**
   * Per-statement budget, ms: the wait for a pooled or new connection and the server's answer,
   * together; past it the statement fails with StoreUnavailableError. Unset: a connection within
   * DEFAULT_PG_CONNECT_TIMEOUT, then answers are waited for as long as they take.
   */
  timeout?: number
}

// BIGINT (int8) columns hold millisecond timestamps: return them as numbers, not strings.
pg.types.setTypeParser(20, (v: string) => Number(v))

function lockKey (name: string): string {
  // pg_advisory_xact_lock takes a signed 64-bit key; derive a stable one from the name.
  return createHash('sha256').update(name).digest().readBigInt64BE(0).toString()
}

/** The URL for logs and errors: password masked, query (which may carry one) left out. */
function redactUrl (url: string): string {
  try {
    const u = new URL(url)
    if (u.password !== '') u.password = '***'
    u.search = ''
    return u.toString()
  } catch {
    return 'postgres:(unparseable url)'
  }
}

/** Host, port, database and user of a postgres:// URL (libpq's defaults where it names none). */
export function postgresTarget (url: string): { host: string, port: number, database: string, user: string | null } {
  const u = new URL(url)
  const q = u.searchParams
  const user = u.username !== '' ? decodeURIComponent(u.username) : (q.get('user') ?? null)
  const database = decodeURIComponent(u.pathname.replace(/^\//, '')) || q.get('dbname') || user || 'postgres'
  const host = decodeURIComponent(u.hostname.replace(/^\[(.*)\]$/, '$1')) || q.get('host') || 'localhost'
  return { host, port: Number(u.port || q.get('port') || 5432), database, user }
}

/**
 * Which schema a default store uses, asked on a connection with the server's search_path: `own`,
 * whether DEFAULT_PG_SCHEMA holds a store; `legacy`, the schema where the search_path finds one (where
 * a build from before the default schema created it, and reads it still).
 */
const DETECT_SCHEMA = `SELECT to_regclass('${DEFAULT_PG_SCHEMA}.portcullis_schema') IS NOT NULL AS own,
  (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass('portcullis_schema')) AS legacy`

/**
 * PostgreSQL backend (pg pool). Its tables live in one schema (PostgresOptions.schema: by default
 * DEFAULT_PG_SCHEMA), set as every connection's search_path once `ready()` has settled it.
 *
 * With a `timeout`, every statement has that budget: waiting for a
 * pooled connection (all busy) or opening one, and then the server's answer, together. A server
 * that refuses, stops, or is frozen (it accepts connections but never answers: no socket error
 * ever comes) then fails a statement within the budget, as StoreUnavailableError, and the
 * connection it was on is discarded; the pool opens fresh ones once the server is back. (The auth
 * service sets it, AUTH_DATABASE_TIMEOUT; openDb does not, so other processes wait as before.)
 *
 * A transaction that takes a named lock (`tx.lock`: migrations, key changes) is maintenance that may
 * wait on other processes holding the lock for longer than any budget: from the lock on, its
 * statements wait as long as they take, as before. Request paths (logins, refresh tokens) never lock.
 */
export class PostgresDb implements Db {
  readonly dialect = 'postgres' as const
  #pool: pg.Pool
  /** The per-statement budget, ms, or undefined (none). */
  #timeout: number | undefined
  /** The longest wait for a pooled or new connection, ms. */
  #connectTimeout: number
  #closed = false
  #ready: Promise<void> | undefined
  /** 'default': DEFAULT_PG_SCHEMA or an older install's; 'explicit': the one given; 'search_path': none of ours. */
  #mode: 'default' | 'explicit' | 'search_path'
  /** The schema in use: known from the start unless the mode is 'default' (then after ready()). */
  #schema: string | null
  #legacy = false
  #url: string
  #target: ReturnType<typeof postgresTarget>

  constructor (url: string, opts: PostgresOptions = {}) {
    const schema = opts.schema
    if (typeof schema === 'string' && !PG_SCHEMA_NAME.test(schema)) {
      throw new Error(`invalid PostgreSQL schema name "${schema}"`)
    }
    if (opts.timeout !== undefined && !(opts.timeout > 0)) throw new Error(`invalid PostgreSQL statement timeout ${opts.timeout} ms`)
    this.#mode = schema === undefined ? 'default' : schema === null ? 'search_path' : 'explicit'
    this.#schema = typeof schema === 'string' ? schema : null
    this.#url = url
    this.#target = postgresTarget(url)
    this.#timeout = opts.timeout
    this.#connectTimeout = opts.timeout ?? DEFAULT_PG_CONNECT_TIMEOUT
    this.#pool = new pg.Pool({
      connectionString: url,
      max: opts.poolSize ?? DEFAULT_PG_POOL_SIZE,
      // Both the wait for a free pooled connection and the opening of a new one (pg-pool).
      connectionTimeoutMillis: this.#connectTimeout,
      ...(this.#mode === 'explicit' ? { options: `-c search_path=${schema}` } : {})
    })
    // An idle client losing its connection must not crash the process; the next query reconnects.
    this.#pool.on('error', () => {})
  }

  /** The URL without its password, and the schema (once known). */
  get description (): string {
    const schema = this.#schema === null
      ? (this.#mode === 'default' ? ` (schema ${DEFAULT_PG_SCHEMA}, or an older install's on the search_path)` : '')
      : ` (schema ${this.#schema}${this.#legacy ? ', an older install\'s tables found on the search_path' : ''})`
    return redactUrl(this.#url) + schema
  }

  get location (): StoreLocation {
    return { engine: 'postgres', ...this.#target, schema: this.#schema, legacy: this.#legacy }
  }

  ready (): Promise<void> {
    if (this.#ready === undefined) {
      const p = this.#prepare()
      this.#ready = p
      // A failure (the server down at start) is not kept: the next statement tries again.
      p.catch(() => { if (this.#ready === p) this.#ready = undefined })
    }
    return this.#ready
  }

  async #prepare (): Promise<void> {
    if (this.#mode === 'search_path') return
    if (this.#mode === 'explicit') {
      await this.#createSchema(this.#schema!)
      return
    }
    // Detected on a connection with the server's own search_path (the pool has no option set yet),
    // which is then closed, never handed out: every later one gets the schema as its search_path.
    const c = await this.#acquire()
    let found: { own: boolean, legacy: string | null }
    try {
      found = (await this.#send(c.client, DETECT_SCHEMA, [], this.#deadline())).rows[0] as { own: boolean, legacy: string | null }
    } catch (err) {
      c.release(true)
      throw this.#named(err)
    }
    c.release(true)
    let schema = DEFAULT_PG_SCHEMA
    if (found.own && found.legacy !== null && found.legacy !== DEFAULT_PG_SCHEMA) {
      // Never a silent pick: one of them is empty or stale (an install in public, and a store made
      // in the default schema since, by a command given DATABASE_SCHEMA=portcullis, say).
      throw new ConfigError('DATABASE_SCHEMA', `is unset, and both schema ${DEFAULT_PG_SCHEMA} and schema ${found.legacy} (on the search_path) of ${redactUrl(this.#url)} hold a Portcullis store: set it to the one to use (see "Upgrades" in docs/operations.md)`)
    }
    if (!found.own && found.legacy !== null) {
      if (!PG_SCHEMA_NAME.test(found.legacy)) {
        throw new ConfigError('DATABASE_SCHEMA', `is unset, and the Portcullis store the search_path finds is in schema "${found.legacy}", which cannot be named unquoted: move its tables to schema ${DEFAULT_PG_SCHEMA} (see "Upgrades" in docs/operations.md)`)
      }
      schema = found.legacy
      this.#legacy = true
    }
    this.#pool.options.options = `-c search_path=${schema}`
    this.#schema = schema
    if (!found.own && !this.#legacy) await this.#createSchema(schema)
  }

  /** Creates the schema unless it exists (asked first: CREATE SCHEMA IF NOT EXISTS needs the CREATE right on the database even then). */
  async #createSchema (schema: string): Promise<void> {
    if ((await this.#once('SELECT 1 FROM pg_namespace WHERE nspname = ?', [schema])).rowCount !== 0) return
    try {
      await this.#once(`CREATE SCHEMA IF NOT EXISTS ${schema}`, [])
    } catch (err) {
      // Two processes creating the same new schema at once: IF NOT EXISTS does not cover the race,
      // the loser gets a unique violation (pg_namespace) or duplicate_schema, and the schema exists.
      const code = (err as { code?: unknown }).code
      if (code === '23505' || code === '42P06') return
      throw err
    }
  }

  /**
   * A failure to reach the server, or to hear from it within the budget, becomes one error naming
   * the store (its password redacted); SQL errors (and errors already named) pass unchanged.
   */
  #named (err: unknown): unknown {
    if (!isConnectionProblem(err)) return err
    const message = (err as Error).message
    let why = message
    if (message === 'Query read timeout') {
      why = `no answer within ${this.#timeout} ms`
    } else if (message === 'timeout exceeded when trying to connect') {
      why = `no connection within ${this.#connectTimeout} ms: the server does not answer, or all ${this.#pool.options.max} pooled connections are busy`
    } else if (message.startsWith('Connection terminated due to connection timeout')) {
      why = `no connection within ${this.#connectTimeout} ms: the server does not answer`
    }
    const named = new StoreUnavailableError(this.description, why)
    named.cause = err
    return named
  }

  /** A pooled connection within the budget; its `error` events (the server going away between statements) are kept, not thrown. */
  async #acquire (): Promise<{ client: pg.PoolClient, lost: () => unknown, release: (discard: boolean) => void }> {
    let lost: unknown
    // A checked-out client has no listener of pg-pool's: without this one, a connection ended by the
    // server between two statements of a transaction (57P01 at shutdown) would crash the process.
    // Attached in the pool's callback, in the same tick as pg-pool removes its own listener.
    const onError = (err: unknown): void => { lost ??= err }
    let client: pg.PoolClient
    try {
      client = await new Promise<pg.PoolClient>((resolve, reject) => {
        this.#pool.connect((err, c) => {
          if (err !== undefined && err !== null) reject(err)
          else if (c === undefined) reject(new Error('pg pool gave no client'))
          else {
            c.on('error', onError)
            resolve(c)
          }
        })
      })
    } catch (err) {
      throw this.#named(err)
    }
    return {
      client,
      lost: () => lost,
      release: (discard) => {
        client.removeListener('error', onError)
        // A discarded connection is closed, never handed out again (a timed-out statement is still running on it).
        client.release(discard || lost !== undefined ? (lost instanceof Error ? lost : true) : undefined)
      }
    }
  }

  /** When a statement starting now must have its answer (performance.now() ms), or undefined without a budget. */
  #deadline (): number | undefined {
    return this.#timeout === undefined ? undefined : performance.now() + this.#timeout
  }

  /** Sends one statement with what is left of `deadline` (performance.now() ms), or without a limit. */
  #send (client: pg.PoolClient, sql: string, params: readonly Param[], deadline: number | undefined): Promise<pg.QueryResult> {
    const config: pg.QueryConfig & { query_timeout?: number } = { text: toPgPlaceholders(sql), values: params as unknown[] }
    // At least 1 ms: 0 would mean "no limit" to pg. A budget spent waiting for a connection fails at once.
    if (deadline !== undefined) config.query_timeout = Math.max(1, Math.ceil(deadline - performance.now()))
    return client.query(config)
  }

  /** One statement outside a transaction, within the budget. */
  async #once (sql: string, params: readonly Param[]): Promise<pg.QueryResult> {
    const deadline = this.#deadline()
    const c = await this.#acquire()
    try {
      const res = await this.#send(c.client, sql, params, deadline)
      c.release(false)
      return res
    } catch (err) {
      // As pg's pool.query does: a connection whose statement failed is not reused.
      c.release(true)
      throw this.#named(err)
    }
  }

  async query<T extends Row = Row> (sql: string, params: readonly Param[] = []): Promise<T[]> {
    await this.ready()
    return (await this.#once(sql, params)).rows as T[]
  }

  async run (sql: string, params: readonly Param[] = []): Promise<number> {
    await this.ready()
    return (await this.#once(sql, params)).rowCount ?? 0
  }

  async transaction<T> (fn: (tx: Tx) => Promise<T>): Promise<T> {
    await this.ready()
    const beginDeadline = this.#deadline()
    const c = await this.#acquire()
    // Each statement has its own budget (BEGIN shares one with the wait for the connection), until a lock is taken.
    let bounded = true
    let failed: unknown
    const statement = async (sql: string, params: readonly Param[], deadline?: number): Promise<pg.QueryResult> => {
      try {
        return await this.#send(c.client, sql, params, bounded ? deadline ?? this.#deadline() : undefined)
      } catch (err) {
        if (isConnectionProblem(err)) failed ??= err
        throw this.#named(err)
      }
    }
    const tx: Tx = {
      dialect: 'postgres',
      query: async <R extends Row = Row>(sql: string, params: readonly Param[] = []) => (await statement(sql, params)).rows as R[],
      run: async (sql: string, params: readonly Param[] = []) => (await statement(sql, params)).rowCount ?? 0,
      lock: async (name: string) => {
        bounded = false
        await statement('SELECT pg_advisory_xact_lock(?::bigint)', [lockKey(name)])
      }
    }
    try {
      await statement('BEGIN', [], beginDeadline)
      const result = await fn(tx)
      await statement('COMMIT', [])
      c.release(false)
      return result
    } catch (err) {
      // The connection is gone or silent: no ROLLBACK to wait for (the server rolls back a transaction whose connection ends).
      let broken = failed !== undefined || c.lost() !== undefined
      if (!broken) {
        try {
          await statement('ROLLBACK', [])
        } catch {
          broken = true
        }
      }
      c.release(broken)
      throw this.#named(err)
    }
  }

  async close (): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    await this.#pool.end()
  }

  /**
   * LISTEN on `channel` over a connection of its own (not the pool's: a LISTEN lives as long as its
   * connection). A lost connection is made again (1 s apart) and `onNotify` called once, since
   * notifications sent meanwhile are lost: the caller then looks for what it missed.
   */
  async listen (channel: string, onNotify: () => void): Promise<() => Promise<void>> {
    if (!/^[a-z_][a-z0-9_]*$/.test(channel)) throw new Error(`invalid channel name "${channel}"`)
    let stopped = false
    let client: pg.Client | undefined
    let retry: NodeJS.Timeout | undefined
    const connect = async (): Promise<void> => {
      const c = new pg.Client({ connectionString: this.#url, connectionTimeoutMillis: this.#connectTimeout })
      c.on('notification', () => { onNotify() })
      c.on('error', () => { lost(c) })
      c.on('end', () => { lost(c) })
      await c.connect()
      await c.query(`LISTEN ${channel}`)
      if (stopped) { await c.end().catch(() => {}); return }
      client = c
    }
    const lost = (c: pg.Client): void => {
      if (client !== c || stopped) return
      client = undefined
      c.end().catch(() => {})
      const again = (): void => {
        retry = setTimeout(() => {
          connect().then(() => { onNotify() }, again)
        }, 1000)
        retry.unref()
      }
      again()
    }
    await connect()
    return async () => {
      stopped = true
      clearTimeout(retry)
      const c = client
      client = undefined
      await c?.end().catch(() => {})
    }
  }
}
