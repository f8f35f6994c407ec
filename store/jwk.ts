import { createHash, createPublicKey, type KeyObject } from 'node:crypto'

/** The public members a JWKS publishes for one signing key; nothing else ever leaves the store. */
export interface PublicJwk { kty: 'RSA', kid: string, use: 'sig', alg: 'RS256', n: string, e: string }

/** The RSA public key members, as stored. */
export interface RsaPublicMembers { kty: 'RSA', n: string, e: string }

const B64URL = /^[A-Za-z0-9_-]+$/

/**
 * RFC 7638 JWK thumbprint (SHA-256, base64url): the required members in lexicographic order, no
 * whitespace. Used as the `kid`, so a kid names exactly one public key.
 */
export function jwkThumbprint (jwk: RsaPublicMembers): string {
  const canonical = JSON.stringify({ e: jwk.e, kty: jwk.kty, n: jwk.n })
  return createHash('sha256').update(canonical).digest('base64url')
}

/** The public members of an RSA key object. */
export function rsaPublicMembers (key: KeyObject): RsaPublicMembers {
  const pub = key.type === 'private' ? createPublicKey(key) : key
  const jwk = pub.export({ format: 'jwk' })
  if (jwk.kty !== 'RSA' || typeof jwk.n !== 'string' || typeof jwk.e !== 'string') {
    throw new Error('not an RSA key')
  }
  return { kty: 'RSA', n: jwk.n, e: jwk.e }
}

/**
 * Parses stored public members, returning a problem description instead of throwing so callers can
 * name the row in their own error.
 */
export function parseRsaPublicMembers (text: string): RsaPublicMembers | string {
  let v: unknown
  try {
    v = JSON.parse(text)
  } catch {
    return 'public key is not valid JSON'
  }
  if (v === null || typeof v !== 'object') return 'public key is not a JSON object'
  const o = v as Record<string, unknown>
  if (o.kty !== 'RSA') return 'public key is not an RSA key'
  if (typeof o.n !== 'string' || !B64URL.test(o.n)) return 'public key modulus "n" is missing or not base64url'
  if (typeof o.e !== 'string' || !B64URL.test(o.e)) return 'public key exponent "e" is missing or not base64url'
  return { kty: 'RSA', n: o.n, e: o.e }
}

export function toPublicJwk (kid: string, m: RsaPublicMembers): PublicJwk {
  return { kty: 'RSA', kid, use: 'sig', alg: 'RS256', n: m.n, e: m.e }
}
