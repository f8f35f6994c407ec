import { createHash } from 'node:crypto'

/**
 * What a revocation names: a session (`sid`, in every access token issued for it), a user (every
 * token issued to `sub` at or before the revocation), one token (`jti`) or a signing key (`kid`).
 */
export const REVOCATION_KINDS = ['sid', 'sub', 'jti', 'kid'] as const
export type RevocationKind = typeof REVOCATION_KINDS[number]

/**
 * How a revoked session, user or token is named on the revocation feed, which is public like the
 * JWKS: the first 128 bits of SHA-256(`<kind>:<value>`), base64url. The issuer writes it; a verifier
 * computes it from a token's claims once per verification (and caches it with the token).
 */
export function revocationDigest (kind: Exclude<RevocationKind, 'kid'>, value: string): string {
  return createHash('sha256').update(`${kind}:${value}`, 'utf8').digest('base64url').slice(0, 22)
}
