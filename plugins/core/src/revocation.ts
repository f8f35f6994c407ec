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

/** One revocation as the issuer publishes it: `seq` orders it among the issuer's revocations. */
export interface RevocationMessage {
  seq: number
  kind: RevocationKind
  /** revocationDigest of the kind and the value; for `kid`, the kid itself. */
  digest: string
  /** Epoch ms the revocation was recorded (a user revocation refuses tokens issued at or before it). */
  revokedAt: number
  /** Epoch ms after which no token it can match is valid: it is forgotten then. */
  expiresAt: number
}

/** The wire form of a revocation (a feed event's data, a Redis message's element): one JSON object. */
export function formatRevocation (m: RevocationMessage): string {
  return `{"seq":${m.seq},"kind":"${m.kind}","digest":${JSON.stringify(m.digest)},"revokedAt":${m.revokedAt},"expiresAt":${m.expiresAt}}`
}

/** A revocation from its wire form (parsed JSON), or undefined when any field is missing or wrong. */
export function revocationFrom (v: unknown): RevocationMessage | undefined {
  if (typeof v !== 'object' || v === null) return undefined
  const d = v as Record<string, unknown>
  if (!(REVOCATION_KINDS as readonly string[]).includes(d.kind as string) || typeof d.digest !== 'string' || d.digest === '' ||
    !Number.isSafeInteger(d.seq) || (d.seq as number) < 1 ||
    typeof d.revokedAt !== 'number' || !Number.isFinite(d.revokedAt) || typeof d.expiresAt !== 'number' || !Number.isFinite(d.expiresAt)) return undefined
  return { seq: d.seq as number, kind: d.kind as RevocationKind, digest: d.digest, revokedAt: d.revokedAt, expiresAt: d.expiresAt }
}

/**
 * Where an issuer's revocations travel through Redis (REDIS_URL): each batch is published on
 * `channel` as a JSON array, and every revocation still in force is kept in the sorted set `inForce`
 * (scored by its expiry), which a verifier reads when it subscribes or resubscribes: nothing sent
 * while it was away is missed.
 */
export function revocationRedisNames (issuer: string): { channel: string, inForce: string } {
  const base = `portcullis:revocations:${issuer}`
  return { channel: base, inForce: `${base}:in-force` }
}
