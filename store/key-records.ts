import type { Queryable } from './db.js'
import { KeyCorruptError } from './key-errors.js'
import { jwkThumbprint, parseRsaPublicMembers, type RsaPublicMembers } from './jwk.js'
import { KEYS_TABLE } from './keys-schema.js'

export const KEY_STATES = ['pending', 'active', 'retired', 'revoked'] as const
export type KeyState = typeof KEY_STATES[number]

/** One stored signing key as the lifecycle sees it: public data and timestamps (epoch ms), no secrets. */
export interface KeyRecord {
  kid: string
  state: KeyState
  keySize: number
  createdAt: number
  /** Pending keys: when the key is planned to start signing. */
  activatesAt: number | null
  activatedAt: number | null
  retiredAt: number | null
  revokedAt: number | null
  /** The public members (n, e). */
  publicKey: RsaPublicMembers
  /** Whether the sealed private part is still stored (pending and active keys only). */
  hasPrivate: boolean
}

/** A raw row, as the database returns it. */
export interface KeyRow extends Record<string, unknown> {
  kid: string
  state: string
  alg: string
  key_size: number
  public_jwk: string
  private_sealed: string | null
  created_at: number
  activates_at: number | null
  activated_at: number | null
  retired_at: number | null
  revoked_at: number | null
}

export const KEY_COLUMNS = 'kid, state, alg, key_size, public_jwk, private_sealed, created_at, activates_at, activated_at, retired_at, revoked_at'

function ts (row: KeyRow, col: keyof KeyRow, required: boolean): number | null {
  const v = row[col]
  if (v === null || v === undefined) {
    if (required) throw new KeyCorruptError(row.kid, `${String(col)} is missing`)
    return null
  }
  const n = Number(v)
  if (!Number.isSafeInteger(n) || n < 0) throw new KeyCorruptError(row.kid, `${String(col)} is not a timestamp`)
  return n
}

/** Validates one row: state, algorithm, public key matching its kid, timestamps the state needs. */
export function recordFromRow (row: KeyRow): KeyRecord {
  const kid = String(row.kid)
  const state = row.state as KeyState
  if (!KEY_STATES.includes(state)) throw new KeyCorruptError(kid, `unknown state "${String(row.state)}"`)
  if (row.alg !== 'RS256') throw new KeyCorruptError(kid, `unsupported algorithm "${String(row.alg)}"`)
  const pub = parseRsaPublicMembers(String(row.public_jwk))
  if (typeof pub === 'string') throw new KeyCorruptError(kid, pub)
  if (jwkThumbprint(pub) !== kid) throw new KeyCorruptError(kid, 'public key does not match its kid (RFC 7638 thumbprint)')
  const hasPrivate = row.private_sealed !== null && row.private_sealed !== undefined
  if ((state === 'pending' || state === 'active') && !hasPrivate) throw new KeyCorruptError(kid, `${state} key has no private part`)
  return {
    kid,
    state,
    keySize: Number(row.key_size),
    createdAt: ts(row, 'created_at', true)!,
    activatesAt: ts(row, 'activates_at', state === 'pending'),
    activatedAt: ts(row, 'activated_at', state === 'active'),
    retiredAt: ts(row, 'retired_at', state === 'retired'),
    revokedAt: ts(row, 'revoked_at', state === 'revoked'),
    publicKey: pub,
    hasPrivate
  }
}

export async function readKeyRows (q: Queryable, where = '', params: Array<string | number> = []): Promise<KeyRow[]> {
  return await q.query<KeyRow>(`SELECT ${KEY_COLUMNS} FROM ${KEYS_TABLE} ${where} ORDER BY created_at, kid`, params)
}
