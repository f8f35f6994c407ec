import { createHash, randomBytes, timingSafeEqual } from 'node:crypto'
import type { Db } from './db.js'
import { migrate, type Component } from './migrate.js'
import { AccountExistsError, InvalidAccountError } from './account-errors.js'
import { isUniqueViolation } from './unique-violation.js'

/**
 * Service clients for the OAuth client-credentials grant. The secret is 256 random bits, shown once
 * and stored as its SHA-256: with that much entropy a slow hash adds nothing (there is nothing to
 * guess), and a fast one keeps client-credentials issuance cheap.
 */
export interface Client {
  clientId: string
  /** Scopes the client may be granted (RFC 6749 scope-tokens). */
  scopes: string[]
  /** The `aud` of its tokens; null means the auth service's default audience. */
  audience: string | null
  createdAt: number
}

export interface NewClient {
  /** @defaultValue a generated `svc-<hex>` id */
  clientId?: string
  scopes?: string[]
  audience?: string
}

export const CLIENT_ID_RE = /^[a-z0-9][a-z0-9._-]{0,63}$/
/** RFC 6749 scope-token characters, minus `"` and `\`, up to 64 long. */
export const SCOPE_RE = /^[\x21\x23-\x5B\x5D-\x7E]{1,64}$/
export const AUDIENCE_RE = /^[\x21-\x7E]{1,256}$/
export const SECRET_BYTES = 32

export const clientsComponent: Component = {
  name: 'clients',
  migrations: [{
    version: 1,
    description: 'service clients with a hashed secret, scopes and an audience',
    up: [
      `CREATE TABLE clients (
        client_id TEXT PRIMARY KEY,
        secret_hash TEXT NOT NULL,
        scopes TEXT NOT NULL,
        audience TEXT,
        created_at BIGINT NOT NULL
      )`
    ]
  }]
}

interface ClientRow {
  client_id: string
  secret_hash: string
  scopes: string
  audience: string | null
  created_at: number | string
  [k: string]: unknown
}

function toClient (r: ClientRow): Client {
  return {
    clientId: r.client_id,
    scopes: r.scopes === '' ? [] : r.scopes.split(' '),
    audience: r.audience,
    createdAt: Number(r.created_at)
  }
}

function secretHash (secret: string): Buffer {
  return createHash('sha256').update(secret, 'utf8').digest()
}

export function validateNewClient (c: NewClient): { clientId: string, scopes: string[], audience: string | null } {
  const clientId = c.clientId ?? `svc-${randomBytes(6).toString('hex')}`
  if (!CLIENT_ID_RE.test(clientId)) {
    throw new InvalidAccountError('client id must be 1-64 characters of a-z, 0-9, ".", "_", "-", starting with a letter or digit')
  }
  const scopes = [...new Set(c.scopes ?? [])]
  for (const s of scopes) {
    if (!SCOPE_RE.test(s)) throw new InvalidAccountError(`scope "${s}" is not a valid scope token`)
  }
  const audience = c.audience ?? null
  if (audience !== null && !AUDIENCE_RE.test(audience)) throw new InvalidAccountError('audience must be 1-256 printable characters without spaces')
  return { clientId, scopes, audience }
}

export class ClientStore {
  #db: Db
  #now: () => number
  // Compared against for unknown clients, so both paths do the same work.
  #dummy = secretHash(randomBytes(SECRET_BYTES).toString('base64url'))

  constructor (db: Db, opts: { now?: () => number } = {}) {
    this.#db = db
    this.#now = opts.now ?? Date.now
  }

  /** Adds a client and returns its secret: the only time the secret exists in clear. */
  async add (input: NewClient): Promise<{ client: Client, clientSecret: string }> {
    const c = validateNewClient(input)
    const clientSecret = randomBytes(SECRET_BYTES).toString('base64url')
    const now = this.#now()
    try {
      await this.#db.run('INSERT INTO clients (client_id, secret_hash, scopes, audience, created_at) VALUES (?, ?, ?, ?, ?)',
        [c.clientId, secretHash(clientSecret).toString('hex'), c.scopes.join(' '), c.audience, now])
    } catch (err) {
      if (isUniqueViolation(err)) throw new AccountExistsError(`client "${c.clientId}"`)
      throw err
    }
    return { client: { ...c, createdAt: now }, clientSecret }
  }

  async get (clientId: string): Promise<Client | null> {
    const rows = await this.#db.query<ClientRow>('SELECT * FROM clients WHERE client_id = ?', [clientId])
    return rows[0] !== undefined ? toClient(rows[0]) : null
  }

  async list (): Promise<Client[]> {
    const rows = await this.#db.query<ClientRow>('SELECT * FROM clients ORDER BY client_id')
    return rows.map(toClient)
  }

  async remove (clientId: string): Promise<boolean> {
    return (await this.#db.run('DELETE FROM clients WHERE client_id = ?', [clientId])) > 0
  }

  /** The client when the secret matches (constant-time compare), else null; unknown ids do the same work. */
  async verify (clientId: string, clientSecret: string): Promise<Client | null> {
    const rows = await this.#db.query<ClientRow>('SELECT * FROM clients WHERE client_id = ?', [clientId])
    const row = rows[0]
    const presented = secretHash(clientSecret)
    const stored = row !== undefined ? Buffer.from(row.secret_hash, 'hex') : this.#dummy
    const ok = stored.length === presented.length && timingSafeEqual(stored, presented)
    return ok && row !== undefined ? toClient(row) : null
  }
}

export async function openClientStore (db: Db, opts: { now?: () => number } = {}): Promise<ClientStore> {
  await migrate(db, [clientsComponent])
  return new ClientStore(db, opts)
}
