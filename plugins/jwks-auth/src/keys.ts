import { createPublicKey, type KeyObject } from 'node:crypto'
import { MAX_JWKS_KEYS, MIN_RSA_BITS, SUPPORTED_ALGORITHMS } from './options.js'

/** One verification key of an issuer, parsed once (parsing a PEM per request costs ~6x the verify). */
export interface KeyEntry {
  kid: string
  key: KeyObject
  /** The JWK's `alg`, when it names one: the token's header must then use exactly it. */
  alg: string | undefined
  bits: number
  /** Signature length in bytes (the modulus length): anything else cannot verify. */
  sigBytes: number
  /** `n.e`, to tell a changed key from the same key seen again. */
  material: string
}

export type JwkRejection = 'not_object' | 'no_kid' | 'not_rsa' | 'not_sig' | 'bad_alg' | 'bad_material' | 'bad_exponent' | 'too_short'

const MAX_KID_LENGTH = 256

function isB64u (v: unknown): v is string {
  return typeof v === 'string' && v.length > 0 && /^[A-Za-z0-9_-]+$/.test(v)
}

/** Parses one JWK into a KeyEntry, or says why it is refused (only RSA signing keys of >= 2048 bits pass). */
export function parseJwk (jwk: unknown): KeyEntry | JwkRejection {
  if (jwk === null || typeof jwk !== 'object' || Array.isArray(jwk)) return 'not_object'
  const j = jwk as Record<string, unknown>
  if (typeof j.kid !== 'string' || j.kid === '' || j.kid.length > MAX_KID_LENGTH) return 'no_kid'
  if (j.kty !== 'RSA') return 'not_rsa'
  if (j.use !== undefined && j.use !== 'sig') return 'not_sig'
  if (j.key_ops !== undefined && !(Array.isArray(j.key_ops) && j.key_ops.includes('verify'))) return 'not_sig'
  if (j.alg !== undefined && !(SUPPORTED_ALGORITHMS as readonly unknown[]).includes(j.alg)) return 'bad_alg'
  if (!isB64u(j.n) || !isB64u(j.e)) return 'bad_material'
  // OpenSSL imports and verifies with e = 1, where the signature is the padded digest itself, so
  // anyone could sign; an even e is no RSA key either. A trusted issuer never publishes these.
  const e = BigInt(`0x${Buffer.from(j.e, 'base64url').toString('hex') || '0'}`)
  if (e < 3n || e % 2n === 0n) return 'bad_exponent'
  let key: KeyObject
  try {
    // Only the public members: a JWK that also carries `d` must not become a private key here.
    key = createPublicKey({ key: { kty: 'RSA', n: j.n, e: j.e }, format: 'jwk' })
  } catch {
    return 'bad_material'
  }
  const bits = key.asymmetricKeyDetails?.modulusLength ?? 0
  if (bits < MIN_RSA_BITS) return 'too_short'
  return { kid: j.kid, key, alg: j.alg as string | undefined, bits, sigBytes: Math.ceil(bits / 8), material: `${j.n}.${j.e}` }
}

export interface ParsedJwks {
  keys: Map<string, KeyEntry>
  rejected: Array<{ kid: string | undefined, why: JwkRejection | 'duplicate_kid' | 'over_limit' }>
}

/**
 * Parses a JWKS document. Returns null when the body is not `{ keys: [...] }` at all (a broken answer,
 * not an empty set). Keys that fail `parseJwk`, repeat a kid or exceed MAX_JWKS_KEYS are left out and listed.
 */
export function parseJwks (body: unknown, previous?: Map<string, KeyEntry>): ParsedJwks | null {
  if (body === null || typeof body !== 'object' || !Array.isArray((body as { keys?: unknown }).keys)) return null
  const keys = new Map<string, KeyEntry>()
  const rejected: ParsedJwks['rejected'] = []
  const dup = new Set<string>()
  for (const jwk of (body as { keys: unknown[] }).keys) {
    const kid = typeof (jwk as { kid?: unknown })?.kid === 'string' ? (jwk as { kid: string }).kid : undefined
    if (keys.size >= MAX_JWKS_KEYS) {
      rejected.push({ kid, why: 'over_limit' })
      continue
    }
    const parsed = parseJwk(jwk)
    if (typeof parsed === 'string') {
      rejected.push({ kid, why: parsed })
      continue
    }
    if (keys.has(parsed.kid) || dup.has(parsed.kid)) {
      // Two keys under one kid: which one a token meant is ambiguous, so neither is trusted.
      keys.delete(parsed.kid)
      dup.add(parsed.kid)
      rejected.push({ kid, why: 'duplicate_kid' })
      continue
    }
    const old = previous?.get(parsed.kid)
    // Keep the existing entry for an unchanged key so cached verifications tied to it stay valid.
    keys.set(parsed.kid, old !== undefined && old.material === parsed.material && old.alg === parsed.alg ? old : parsed)
  }
  return { keys, rejected }
}
