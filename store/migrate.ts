import type { Db, Dialect } from './db.js'

/**
 * Schema migrations, versioned per component ("keys", "users", ...), so each area of the store owns
 * its tables and its own list. Applied in order inside one transaction per component; a database
 * newer than the code is refused instead of being silently misread.
 */
export interface Migration {
  version: number
  description: string
  /** SQL statements, either portable or per dialect. */
  up: string[] | Record<Dialect, string[]>
}

export interface Component {
  name: string
  migrations: Migration[]
}

export class SchemaTooNewError extends Error {
  constructor (component: string, found: number, known: number) {
    super(`database schema for "${component}" is version ${found}, newer than this build knows (${known}); upgrade Portcullis`)
    this.name = 'SchemaTooNewError'
  }
}

const META = `CREATE TABLE IF NOT EXISTS portcullis_schema (
  component TEXT PRIMARY KEY,
  version INTEGER NOT NULL
)`

export async function migrate (db: Db, components: readonly Component[]): Promise<void> {
  await db.transaction(async (tx) => {
    await tx.lock('portcullis_schema')
    await tx.run(META)
  })
  for (const c of components) {
    await db.transaction(async (tx) => {
      await tx.lock('portcullis_schema')
      const rows = await tx.query<{ version: number }>('SELECT version FROM portcullis_schema WHERE component = ?', [c.name])
      const current = rows[0] !== undefined ? Number(rows[0].version) : 0
      const latest = c.migrations.reduce((m, x) => Math.max(m, x.version), 0)
      if (current > latest) throw new SchemaTooNewError(c.name, current, latest)
      const todo = c.migrations.filter((m) => m.version > current).sort((a, b) => a.version - b.version)
      for (const m of todo) {
        const stmts = Array.isArray(m.up) ? m.up : m.up[tx.dialect]
        for (const s of stmts) await tx.run(s)
      }
      if (todo.length > 0) {
        if (current === 0) {
          await tx.run('INSERT INTO portcullis_schema (component, version) VALUES (?, ?)', [c.name, latest])
        } else {
          await tx.run('UPDATE portcullis_schema SET version = ? WHERE component = ?', [latest, c.name])
        }
      }
    })
  }
}
