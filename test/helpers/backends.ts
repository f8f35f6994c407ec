import { randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import pg from 'pg'
import { openDb, type Db } from '../../store/index.js'

/** PostgreSQL used by tests; the machine's shared server, never reconfigured, one schema per test. */
export const TEST_DATABASE_URL = process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test'

let pgReachable: Promise<boolean> | undefined

export function postgresReachable (): Promise<boolean> {
  pgReachable ??= (async () => {
    const c = new pg.Client({ connectionString: TEST_DATABASE_URL, connectionTimeoutMillis: 2000 })
    try {
      await c.connect()
      await c.query('SELECT 1')
      return true
    } catch {
      return false
    } finally {
      await c.end().catch(() => {})
    }
  })()
  return pgReachable
}

export interface TestBackend {
  name: 'sqlite' | 'postgres'
  db: Db
  /** Env vars that make a child process open this same store. */
  env: Record<string, string>
  /** Opens another connection to the same store (as another process would). */
  reopen(): Db
  cleanup(): Promise<void>
}

async function sqliteBackend (): Promise<TestBackend> {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-test-'))
  const path = join(dir, 'portcullis.db')
  const opened: Db[] = []
  const reopen = (): Db => {
    const db = openDb({ sqlitePath: path })
    opened.push(db)
    return db
  }
  return {
    name: 'sqlite',
    db: reopen(),
    env: { PORTCULLIS_DATA_DIR: dir },
    reopen,
    cleanup: async () => {
      for (const db of opened) await db.close()
      rmSync(dir, { recursive: true, force: true })
    }
  }
}

async function postgresBackend (): Promise<TestBackend> {
  const schema = `t_${randomBytes(6).toString('hex')}`
  const opened: Db[] = []
  const reopen = (): Db => {
    const db = openDb({ databaseUrl: TEST_DATABASE_URL, pgSchema: schema, pgPoolSize: 4 })
    opened.push(db)
    return db
  }
  const dataDir = mkdtempSync(join(tmpdir(), 'portcullis-test-'))
  return {
    name: 'postgres',
    db: reopen(),
    env: { DATABASE_URL: TEST_DATABASE_URL, DATABASE_SCHEMA: schema, PORTCULLIS_DATA_DIR: dataDir },
    reopen,
    cleanup: async () => {
      for (const db of opened) await db.close()
      const c = new pg.Client({ connectionString: TEST_DATABASE_URL })
      await c.connect()
      await c.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`)
      await c.end()
      rmSync(dataDir, { recursive: true, force: true })
    }
  }
}

/**
 * The backends a storage test must run against: SQLite always; PostgreSQL when reachable, and
 * required (a failure, not a skip) when CI=true.
 */
export async function testBackends (): Promise<Array<{ name: 'sqlite' | 'postgres', skip: string | false, open: () => Promise<TestBackend> }>> {
  const reachable = await postgresReachable()
  if (!reachable && process.env.CI === 'true') {
    throw new Error(`PostgreSQL is required when CI=true but ${TEST_DATABASE_URL} is unreachable`)
  }
  return [
    { name: 'sqlite', skip: false, open: sqliteBackend },
    {
      name: 'postgres',
      skip: reachable ? false : `PostgreSQL not reachable at ${TEST_DATABASE_URL} (required only when CI=true)`,
      open: postgresBackend
    }
  ]
}
