import { revocationDigest, type RevocationKind, type RevocationMessage } from '@portcullis/core'
import type { Db } from './db.js'
import { migrate, type Component } from './migrate.js'

export { REVOCATION_KINDS, revocationDigest, type RevocationKind } from '@portcullis/core'

export const REVOCATIONS_TABLE = 'portcullis_revocations'
const REVOCATIONS_LOCK = 'portcullis_revocations'
/** The PostgreSQL NOTIFY channel a committed revocation is announced on. */
export const REVOCATIONS_CHANNEL = 'portcullis_revocations'

/**
 * One revocation as verifiers receive it (@portcullis/core's RevocationMessage). Sessions, users and
 * tokens travel as digests (revocationDigest of the kind and the value): the feed is public like the
 * JWKS, and names no user or session. Keys travel as their kid (public in the JWKS anyway). `seq` is
 * the position in the store's sequence: the feed's event id, a verifier resumes after it.
 */
export type RevocationEvent = RevocationMessage

/** The table and its index; only the sequence column's type differs between the two dialects. */
function revocationsTable (seq: string): string[] {
  return [
    `CREATE TABLE ${REVOCATIONS_TABLE} (
      seq ${seq},
      kind TEXT NOT NULL CHECK (kind IN ('sid', 'sub', 'jti', 'kid')),
      digest TEXT NOT NULL,
      revoked_at BIGINT NOT NULL,
      expires_at BIGINT NOT NULL,
      reason TEXT
    )`,
    `CREATE INDEX ${REVOCATIONS_TABLE}_expires ON ${REVOCATIONS_TABLE} (expires_at)`
  ]
}

export const revocationsComponent: Component = {
  name: 'revocations',
  migrations: [{
    version: 1,
    description: 'revoked sessions, users, tokens and keys, in the order verifiers receive them',
    up: { sqlite: revocationsTable('INTEGER PRIMARY KEY AUTOINCREMENT'), postgres: revocationsTable('BIGSERIAL PRIMARY KEY') }
  }]
}

interface Row { seq: number | string, kind: string, digest: string, revoked_at: number | string, expires_at: number | string, [k: string]: unknown }

function eventOf (r: Row): RevocationEvent {
  return { seq: Number(r.seq), kind: r.kind as RevocationKind, digest: r.digest, revokedAt: Number(r.revoked_at), expiresAt: Number(r.expires_at) }
}

/**
 * Until when a revocation must be kept: past it no token it can match is valid. A token lives
 * ACCESS_TOKEN_TTL from its issue (which is at latest now) and verifiers accept it CLOCK_SKEW past
 * `exp`; with the token's own `exp` (seconds), that bound instead. Seconds in, epoch ms out.
 */
export function revocationUntil (now: number, accessTokenTtl: number, clockSkew: number, exp?: number): number {
  return (exp !== undefined ? exp * 1000 : now + accessTokenTtl * 1000) + clockSkew * 1000
}

export interface NewRevocation {
  kind: RevocationKind
  /** The session id, subject, jti or kid (digested here, but for kids). */
  value: string
  /** Epoch ms after which no matching token is valid. */
  expiresAt: number
  /** Why (logout, reuse, user_revoked, ...): kept in the store, not sent. */
  reason: string
}

/** The revocations table: written by the auth service and the CLI, read by the auth service's feed. */
export class RevocationStore {
  readonly #db: Db
  readonly #now: () => number

  constructor (db: Db, opts: { now?: () => number } = {}) {
    this.#db = db
    this.#now = opts.now ?? Date.now
  }

  /** Records revocations (one transaction); returns them as events, in order. */
  async add (items: readonly NewRevocation[]): Promise<RevocationEvent[]> {
    if (items.length === 0) return []
    const now = this.#now()
    return await this.#db.transaction(async (tx) => {
      // one writer at a time: sequence numbers then commit in order, so a reader that has seen N
      // never misses a smaller one committed later (PostgreSQL hands out BIGSERIAL values outside
      // the commit order)
      await tx.lock(REVOCATIONS_LOCK)
      const out: RevocationEvent[] = []
      for (const r of items) {
        const digest = r.kind === 'kid' ? r.value : revocationDigest(r.kind, r.value)
        const rows = await tx.query<Row>(
          `INSERT INTO ${REVOCATIONS_TABLE} (kind, digest, revoked_at, expires_at, reason) VALUES (?, ?, ?, ?, ?)
           RETURNING seq, kind, digest, revoked_at, expires_at`,
          [r.kind, digest, now, Math.max(now, r.expiresAt), r.reason])
        out.push(eventOf(rows[0]!))
      }
      // PostgreSQL: every listening auth service hears of it at commit (LISTEN/NOTIFY), instead of
      // at its next look
      if (tx.dialect === 'postgres') await tx.query(`SELECT pg_notify('${REVOCATIONS_CHANNEL}', '')`)
      return out
    })
  }

  /** Revocations after `seq` that still matter at `now` (not expired), in order; at most `limit`. */
  async since (seq: number, limit = 10_000): Promise<RevocationEvent[]> {
    const rows = await this.#db.query<Row>(
      `SELECT seq, kind, digest, revoked_at, expires_at FROM ${REVOCATIONS_TABLE}
        WHERE seq > ? AND expires_at > ? ORDER BY seq LIMIT ?`, [seq, this.#now(), limit])
    return rows.map(eventOf)
  }

  /** The highest sequence number written so far (0 when none). */
  async lastSeq (): Promise<number> {
    const rows = await this.#db.query<{ m: number | string | null }>(`SELECT MAX(seq) AS m FROM ${REVOCATIONS_TABLE}`)
    return Number(rows[0]?.m ?? 0)
  }

  /** Deletes revocations no token can match any more. Returns how many. */
  async prune (): Promise<number> {
    return await this.#db.run(`DELETE FROM ${REVOCATIONS_TABLE} WHERE expires_at <= ?`, [this.#now()])
  }
}

export async function openRevocationStore (db: Db, opts: { now?: () => number } = {}): Promise<RevocationStore> {
  await migrate(db, [revocationsComponent])
  return new RevocationStore(db, opts)
}
