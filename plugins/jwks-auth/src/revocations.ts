import { revocationDigest, type RevocationMessage } from '@portcullis/core'

/** What a token can be revoked by, computed once per verification and cached with it. */
export interface TokenRevocationKeys {
  sid: string | undefined
  jti: string | undefined
  sub: string
  /** `iat` in ms (a user revocation refuses tokens issued at or before it); -Infinity without `iat`. */
  issuedAt: number
  kid: string
}

/** The digests of a verified token's claims (`sid`, `jti`, `sub`), as the feed names them. */
export function tokenRevocationKeys (payload: Record<string, unknown>, kid: string): TokenRevocationKeys {
  const { sid, jti, sub, iat } = payload
  return {
    sid: typeof sid === 'string' && sid !== '' ? revocationDigest('sid', sid) : undefined,
    jti: typeof jti === 'string' && jti !== '' ? revocationDigest('jti', jti) : undefined,
    sub: revocationDigest('sub', sub as string),
    issuedAt: typeof iat === 'number' && Number.isFinite(iat) ? iat * 1000 : Number.NEGATIVE_INFINITY,
    kid
  }
}

/** What the set needs of a revocation. */
export type RevocationEntry = Pick<RevocationMessage, 'kind' | 'digest' | 'revokedAt' | 'expiresAt'>

/**
 * The revocations in force for one issuer: maps from digest (kid for keys) to expiry, O(1) per
 * check. An entry is forgotten once every token it can match has expired (`prune`), so the size is
 * bounded by what was revoked within one access-token lifetime.
 */
export class RevocationSet {
  readonly #sids = new Map<string, number>()
  readonly #jtis = new Map<string, number>()
  readonly #kids = new Map<string, number>()
  /** sub digest -> the latest revocation time and its expiry. */
  readonly #subs = new Map<string, { before: number, expiresAt: number }>()

  get size (): number {
    return this.#sids.size + this.#jtis.size + this.#kids.size + this.#subs.size
  }

  add (e: RevocationEntry): void {
    switch (e.kind) {
      case 'sid': this.#sids.set(e.digest, Math.max(e.expiresAt, this.#sids.get(e.digest) ?? 0)); break
      case 'jti': this.#jtis.set(e.digest, Math.max(e.expiresAt, this.#jtis.get(e.digest) ?? 0)); break
      case 'kid': this.#kids.set(e.digest, Math.max(e.expiresAt, this.#kids.get(e.digest) ?? 0)); break
      case 'sub': {
        const had = this.#subs.get(e.digest)
        this.#subs.set(e.digest, { before: Math.max(e.revokedAt, had?.before ?? 0), expiresAt: Math.max(e.expiresAt, had?.expiresAt ?? 0) })
        break
      }
    }
  }

  /** Whether a token with these keys is revoked. */
  revoked (k: TokenRevocationKeys): boolean {
    if (this.size === 0) return false
    if (k.sid !== undefined && this.#sids.has(k.sid)) return true
    if (k.jti !== undefined && this.#jtis.has(k.jti)) return true
    if (this.#kids.has(k.kid)) return true
    const s = this.#subs.get(k.sub)
    // iat has a one-second resolution: a token issued in the second of the revocation is refused too
    return s !== undefined && k.issuedAt <= s.before
  }

  /** Whether a kid is revoked (checked before the signature: a revoked key verifies nothing). */
  kidRevoked (kid: string): boolean {
    return this.#kids.size > 0 && this.#kids.has(kid)
  }

  /** Forgets entries no token can match any more. Returns how many. */
  prune (now: number): number {
    let n = 0
    for (const m of [this.#sids, this.#jtis, this.#kids]) {
      for (const [k, exp] of m) if (exp <= now) { m.delete(k); n++ }
    }
    for (const [k, v] of this.#subs) if (v.expiresAt <= now) { this.#subs.delete(k); n++ }
    return n
  }
}
