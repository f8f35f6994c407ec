import { randomUUID } from 'node:crypto'
import type { Db } from './db.js'
import { migrate, type Component } from './migrate.js'
import { PasswordHasher } from './password.js'
import { AccountExistsError, InvalidAccountError } from './account-errors.js'
import { isUniqueViolation } from './unique-violation.js'

/** A user as the auth service sees it: `id` becomes the token's `sub`. No password material. */
export interface User {
  id: string
  username: string
  role: string
  /** `resource:action` strings. */
  permissions: string[]
  createdAt: number
}

export interface NewUser {
  username: string
  password: string
  /** @defaultValue `user` */
  role?: string
  permissions?: string[]
}

export const DEFAULT_ROLE = 'user'
export const MIN_PASSWORD_LENGTH = 8
export const MAX_PASSWORD_LENGTH = 1024
export const USERNAME_RE = /^[a-z0-9][a-z0-9._@-]{0,63}$/
export const ROLE_RE = /^[a-z][a-z0-9_-]{0,31}$/
/** `resource:action`, e.g. `order:read`; `*` is allowed as the action. */
export const PERMISSION_RE = /^[a-z0-9_.-]{1,64}:(?:[a-z0-9_.-]{1,64}|\*)$/

export const usersComponent: Component = {
  name: 'users',
  migrations: [{
    version: 1,
    description: 'users with scrypt password hashes, one role and a permission list',
    up: [
      `CREATE TABLE users (
        id TEXT PRIMARY KEY,
        username TEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        role TEXT NOT NULL,
        permissions TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
      )`
    ]
  }]
}

/** Usernames are case-insensitive: stored and looked up in lower case. */
export function normalizeUsername (username: string): string {
  return username.trim().toLowerCase()
}

export function validateNewUser (u: NewUser): Required<NewUser> {
  const username = normalizeUsername(u.username)
  if (!USERNAME_RE.test(username)) {
    throw new InvalidAccountError('username must be 1-64 characters of a-z, 0-9, ".", "_", "@", "-", starting with a letter or digit')
  }
  if (u.password.length < MIN_PASSWORD_LENGTH || u.password.length > MAX_PASSWORD_LENGTH) {
    throw new InvalidAccountError(`password must be ${MIN_PASSWORD_LENGTH} to ${MAX_PASSWORD_LENGTH} characters`)
  }
  const role = u.role ?? DEFAULT_ROLE
  if (!ROLE_RE.test(role)) throw new InvalidAccountError(`role "${role}" must match ${ROLE_RE.source}`)
  const permissions = [...new Set(u.permissions ?? [])]
  for (const p of permissions) {
    if (!PERMISSION_RE.test(p)) throw new InvalidAccountError(`permission "${p}" must be resource:action (lower case), e.g. order:read`)
  }
  return { username, password: u.password, role, permissions }
}

interface UserRow {
  id: string
  username: string
  password_hash: string
  role: string
  permissions: string
  created_at: number | string
  [k: string]: unknown
}

function toUser (r: UserRow): User {
  return {
    id: r.id,
    username: r.username,
    role: r.role,
    permissions: JSON.parse(r.permissions) as string[],
    createdAt: Number(r.created_at)
  }
}

export interface UserStoreOptions {
  hasher?: PasswordHasher
  now?: () => number
}

/** Users and their password hashes. Open with `openUserStore`, which applies its migrations. */
export class UserStore {
  readonly hasher: PasswordHasher
  #db: Db
  #now: () => number

  constructor (db: Db, opts: UserStoreOptions = {}) {
    this.#db = db
    this.hasher = opts.hasher ?? new PasswordHasher()
    this.#now = opts.now ?? Date.now
  }

  /** Adds a user; throws InvalidAccountError (400) for bad fields, AccountExistsError (409) for a taken name. */
  async add (input: NewUser): Promise<User> {
    const u = validateNewUser(input)
    const hash = await this.hasher.hash(u.password)
    const now = this.#now()
    const id = randomUUID()
    try {
      await this.#db.run(
        'INSERT INTO users (id, username, password_hash, role, permissions, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)',
        [id, u.username, hash, u.role, JSON.stringify(u.permissions), now, now]
      )
    } catch (err) {
      if (isUniqueViolation(err)) throw new AccountExistsError(`user "${u.username}"`)
      throw err
    }
    return { id, username: u.username, role: u.role, permissions: u.permissions, createdAt: now }
  }

  async get (username: string): Promise<User | null> {
    const rows = await this.#db.query<UserRow>('SELECT * FROM users WHERE username = ?', [normalizeUsername(username)])
    return rows[0] !== undefined ? toUser(rows[0]) : null
  }

  async getById (id: string): Promise<User | null> {
    const rows = await this.#db.query<UserRow>('SELECT * FROM users WHERE id = ?', [id])
    return rows[0] !== undefined ? toUser(rows[0]) : null
  }

  async list (): Promise<User[]> {
    const rows = await this.#db.query<UserRow>('SELECT * FROM users ORDER BY username')
    return rows.map(toUser)
  }

  /** Removes a user; returns the removed user's id, or null when there was none. */
  async remove (username: string): Promise<string | null> {
    const rows = await this.#db.query<{ id: string }>('SELECT id FROM users WHERE username = ?', [normalizeUsername(username)])
    if (rows[0] === undefined) return null
    const n = await this.#db.run('DELETE FROM users WHERE id = ?', [rows[0].id])
    return n > 0 ? rows[0].id : null
  }

  async setPassword (username: string, password: string): Promise<boolean> {
    if (password.length < MIN_PASSWORD_LENGTH || password.length > MAX_PASSWORD_LENGTH) {
      throw new InvalidAccountError(`password must be ${MIN_PASSWORD_LENGTH} to ${MAX_PASSWORD_LENGTH} characters`)
    }
    const hash = await this.hasher.hash(password)
    const n = await this.#db.run('UPDATE users SET password_hash = ?, updated_at = ? WHERE username = ?',
      [hash, this.#now(), normalizeUsername(username)])
    return n > 0
  }

  /**
   * Checks a username and password. An unknown user costs the same scrypt work as a wrong password
   * and gets the same answer (null). A correct password hashed with older parameters is re-hashed.
   */
  async verify (username: string, password: string): Promise<User | null> {
    const rows = await this.#db.query<UserRow>('SELECT * FROM users WHERE username = ?', [normalizeUsername(username)])
    const row = rows[0]
    if (row === undefined) {
      await this.hasher.verifyDummy(password)
      return null
    }
    const result = await this.hasher.verify(password, row.password_hash)
    if (!result.ok) return null
    if (result.needsRehash) {
      const hash = await this.hasher.hash(password)
      // Only if nobody changed the password meanwhile.
      await this.#db.run('UPDATE users SET password_hash = ?, updated_at = ? WHERE id = ? AND password_hash = ?',
        [hash, this.#now(), row.id, row.password_hash])
    }
    return toUser(row)
  }
}

/** Applies the users migrations and returns the store. */
export async function openUserStore (db: Db, opts: UserStoreOptions = {}): Promise<UserStore> {
  await migrate(db, [usersComponent])
  return new UserStore(db, opts)
}
