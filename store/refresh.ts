import { createHash, randomBytes, randomUUID } from 'node:crypto'
import type { Db } from './db.js'
import { migrate, type Component } from './migrate.js'

/**
 * Refresh-token families. A token is 256 random bits (base64url), stored only as its SHA-256. Every
 * use rotates it: the presented token is marked used and a new one of the same family is issued.
 * Presenting a used token again means it was copied: the whole family is revoked (reuse detection).
 * A family dies at its absolute expiry; each token also dies after an idle period without use.
 */
export interface RefreshStoreOptions {
  /** Seconds a token stays valid without being used. @defaultValue 7 days */
  idleTtl?: number
  /** Seconds a family lives from login, however often it is refreshed. @defaultValue 30 days */
  absoluteTtl?: number
  /** Clock in epoch ms. @defaultValue Date.now */
  now?: () => number
}

export const DEFAULT_REFRESH_IDLE_TTL = 7 * 86400
export const DEFAULT_REFRESH_ABSOLUTE_TTL = 30 * 86400
export const REFRESH_TOKEN_BYTES = 32

export interface IssuedRefreshToken {
  token: string
  familyId: string
  subject: string
  /** Epoch ms after which this token is refused (idle expiry, capped by the family's absolute one). */
  expiresAt: number
}

export type RotateFailure = 'unknown' | 'expired' | 'revoked' | 'reused'

export type RotateResult =
  | ({ ok: true } & IssuedRefreshToken)
  | { ok: false, reason: RotateFailure, familyId?: string, subject?: string }

export const refreshComponent: Component = {
  name: 'refresh',
  migrations: [{
    version: 1,
    description: 'refresh-token families and their (hashed) tokens',
    up: [
      `CREATE TABLE refresh_families (
        id TEXT PRIMARY KEY,
        subject TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        revoked_at BIGINT,
        revoked_reason TEXT
      )`,
      'CREATE INDEX refresh_families_subject ON refresh_families (subject)',
      'CREATE INDEX refresh_families_expires ON refresh_families (expires_at)',
      `CREATE TABLE refresh_tokens (
        token_hash TEXT PRIMARY KEY,
        family_id TEXT NOT NULL REFERENCES refresh_families (id) ON DELETE CASCADE,
        created_at BIGINT NOT NULL,
        idle_expires_at BIGINT NOT NULL,
        used_at BIGINT
      )`,
      'CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id)'
    ]
  }]
}

export function hashRefreshToken (token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex')
}

interface JoinedRow {
  family_id: string
  idle_expires_at: number | string
  used_at: number | string | null
  subject: string
  expires_at: number | string
  revoked_at: number | string | null
  [k: string]: unknown
}

export class RefreshStore {
  readonly idleTtl: number
  readonly absoluteTtl: number
  #db: Db
  #now: () => number

  constructor (db: Db, opts: RefreshStoreOptions = {}) {
    this.idleTtl = opts.idleTtl ?? DEFAULT_REFRESH_IDLE_TTL
    this.absoluteTtl = opts.absoluteTtl ?? DEFAULT_REFRESH_ABSOLUTE_TTL
    if (!(this.idleTtl > 0) || !(this.absoluteTtl >= this.idleTtl)) {
      throw new Error('refresh store: idleTtl must be > 0 and absoluteTtl >= idleTtl')
    }
    this.#db = db
    this.#now = opts.now ?? Date.now
  }

  /** Starts a new family for `subject` (a login) and returns its first token. */
  async issue (subject: string): Promise<IssuedRefreshToken> {
    const now = this.#now()
    const familyId = randomUUID()
    const familyExpires = now + this.absoluteTtl * 1000
    const token = randomBytes(REFRESH_TOKEN_BYTES).toString('base64url')
    const expiresAt = Math.min(now + this.idleTtl * 1000, familyExpires)
    await this.#db.transaction(async (tx) => {
      await tx.run('INSERT INTO refresh_families (id, subject, created_at, expires_at) VALUES (?, ?, ?, ?)',
        [familyId, subject, now, familyExpires])
      await tx.run('INSERT INTO refresh_tokens (token_hash, family_id, created_at, idle_expires_at) VALUES (?, ?, ?, ?)',
        [hashRefreshToken(token), familyId, now, expiresAt])
    })
    return { token, familyId, subject, expiresAt }
  }

  /** The subject of a token's family (live or not), or null for an unknown token. Changes nothing. */
  async subjectOf (token: string): Promise<string | null> {
    const rows = await this.#db.query<{ subject: string }>(
      'SELECT f.subject FROM refresh_tokens t JOIN refresh_families f ON f.id = t.family_id WHERE t.token_hash = ?',
      [hashRefreshToken(token)])
    return rows[0]?.subject ?? null
  }

  /**
   * Exchanges a token for the next one of its family, in one transaction. A token already used
   * (including by a concurrent request that won the race) revokes the family: `reason: 'reused'`.
   * `beforeCommit` runs inside the transaction once the exchange is decided (it must not use the
   * store); if it throws, nothing is spent and the error propagates, so the caller can retry.
   */
  async rotate (token: string, beforeCommit?: (next: { familyId: string, subject: string }) => void): Promise<RotateResult> {
    const hash = hashRefreshToken(token)
    return await this.#db.transaction(async (tx): Promise<RotateResult> => {
      const now = this.#now()
      const rows = await tx.query<JoinedRow>(
        `SELECT t.family_id, t.idle_expires_at, t.used_at, f.subject, f.expires_at, f.revoked_at
           FROM refresh_tokens t JOIN refresh_families f ON f.id = t.family_id
          WHERE t.token_hash = ?`, [hash])
      const row = rows[0]
      if (row === undefined) return { ok: false, reason: 'unknown' }
      const ids = { familyId: row.family_id, subject: row.subject }
      if (row.revoked_at !== null) return { ok: false, reason: 'revoked', ...ids }
      const revokeForReuse = async (): Promise<RotateResult> => {
        await tx.run("UPDATE refresh_families SET revoked_at = ?, revoked_reason = 'reuse' WHERE id = ? AND revoked_at IS NULL",
          [now, row.family_id])
        return { ok: false, reason: 'reused', ...ids }
      }
      if (row.used_at !== null) return await revokeForReuse()
      if (now >= Number(row.expires_at) || now >= Number(row.idle_expires_at)) return { ok: false, reason: 'expired', ...ids }
      // The conditional update is the atomic claim: of two concurrent uses exactly one changes the row.
      const claimed = await tx.run('UPDATE refresh_tokens SET used_at = ? WHERE token_hash = ? AND used_at IS NULL', [now, hash])
      if (claimed === 0) return await revokeForReuse()
      const next = randomBytes(REFRESH_TOKEN_BYTES).toString('base64url')
      const expiresAt = Math.min(now + this.idleTtl * 1000, Number(row.expires_at))
      await tx.run('INSERT INTO refresh_tokens (token_hash, family_id, created_at, idle_expires_at) VALUES (?, ?, ?, ?)',
        [hashRefreshToken(next), row.family_id, now, expiresAt])
      beforeCommit?.(ids)
      return { ok: true, token: next, expiresAt, ...ids }
    })
  }

  /** Revokes the family of `token` (logout). Returns whether a live family was revoked. */
  async revoke (token: string, reason = 'logout'): Promise<boolean> {
    return (await this.revokeFamily(token, reason)) !== null
  }

  /** Revokes the family of `token`; returns its id when a live family was revoked, else null. */
  async revokeFamily (token: string, reason = 'logout'): Promise<string | null> {
    const rows = await this.#db.query<{ id: string }>(
      `UPDATE refresh_families SET revoked_at = ?, revoked_reason = ?
        WHERE revoked_at IS NULL AND id = (SELECT family_id FROM refresh_tokens WHERE token_hash = ?)
        RETURNING id`,
      [this.#now(), reason, hashRefreshToken(token)])
    return rows[0]?.id ?? null
  }

  /** Revokes one family by id (a session revoked by an operator). Returns whether a live one was. */
  async revokeFamilyId (familyId: string, reason: string): Promise<boolean> {
    return await this.#db.run('UPDATE refresh_families SET revoked_at = ?, revoked_reason = ? WHERE id = ? AND revoked_at IS NULL',
      [this.#now(), reason, familyId]) > 0
  }

  /** Revokes every family of a subject (a removed user). Returns how many. */
  async revokeSubject (subject: string, reason = 'subject_removed'): Promise<number> {
    return await this.#db.run('UPDATE refresh_families SET revoked_at = ?, revoked_reason = ? WHERE subject = ? AND revoked_at IS NULL',
      [this.#now(), reason, subject])
  }

  /** Deletes families (and their tokens) past their absolute expiry: nothing in them can be used or detected any more. */
  async prune (): Promise<number> {
    const now = this.#now()
    return await this.#db.transaction(async (tx) => {
      await tx.run('DELETE FROM refresh_tokens WHERE family_id IN (SELECT id FROM refresh_families WHERE expires_at <= ?)', [now])
      return await tx.run('DELETE FROM refresh_families WHERE expires_at <= ?', [now])
    })
  }
}

export async function openRefreshStore (db: Db, opts: RefreshStoreOptions = {}): Promise<RefreshStore> {
  await migrate(db, [refreshComponent])
  return new RefreshStore(db, opts)
}
