import { constants, verify as cryptoVerify } from 'node:crypto'
import type { AuthMetrics } from './metrics.js'
import { AuthFailure, type VerifiedUser } from '@portcullis/core'
import type { RsaAlgorithm, ResolvedOptions } from './options.js'
import type { KeyEntry } from './keys.js'
import type { IssuerKeys } from './refresher.js'
import type { RevocationSource } from './revocation-feed.js'
import { tokenRevocationKeys, type TokenRevocationKeys } from './revocations.js'

interface CachedVerification {
  /** The whole token: a hit needs the full string to match, not just the cache key. */
  token: string
  user: VerifiedUser
  validFrom: number
  validUntil: number
  issuer: IssuerKeys
  kid: string
  entry: KeyEntry
  /** What the token can be revoked by, when its issuer has a revocation feed. */
  rk: TokenRevocationKeys | undefined
}

interface DecodedToken {
  header: Record<string, unknown>
  payload: Record<string, unknown>
  signature: string
  input: string
}

const MAX_KID_LENGTH = 256
const SCRATCH = Buffer.allocUnsafe(16 * 1024)
const HASHES: Record<RsaAlgorithm, string> = {
  RS256: 'sha256', RS384: 'sha384', RS512: 'sha512', PS256: 'sha256', PS384: 'sha384', PS512: 'sha512'
}

// Three base64url segments (the signature may be empty); no padding, whitespace or other characters,
// which Buffer.from would silently skip. One pass over the whole token.
const JWS_COMPACT = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/

function jsonObject (segment: string): Record<string, unknown> {
  let value: unknown
  try {
    // decoded in the scratch buffer (nothing else uses it until the signature check): no Buffer per token
    const text = segment.length <= SCRATCH.length
      ? SCRATCH.toString('utf8', 0, SCRATCH.write(segment, 0, 'base64url'))
      : Buffer.from(segment, 'base64url').toString('utf8')
    value = JSON.parse(text)
  } catch {
    throw new AuthFailure('malformed', 'segment is not base64url JSON')
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new AuthFailure('malformed', 'segment is not a JSON object')
  return value as Record<string, unknown>
}

// Every token of one key carries the same header segment: keep a few parsed (frozen) headers so the
// common case skips a base64 decode and a JSON.parse. Bounded; arbitrary headers just miss.
const HEADER_CACHE_MAX = 64
const headerCache = new Map<string, Record<string, unknown>>()

function parseHeader (segment: string): Record<string, unknown> {
  const hit = headerCache.get(segment)
  if (hit !== undefined) return hit
  const header = Object.freeze(jsonObject(segment))
  if (headerCache.size >= HEADER_CACHE_MAX) headerCache.delete(headerCache.keys().next().value as string)
  headerCache.set(segment, header)
  return header
}

/** JWS compact serialization, strictly: header and payload must be JSON objects. */
export function decodeJws (token: string): DecodedToken {
  if (!JWS_COMPACT.test(token)) throw new AuthFailure('malformed', 'not three base64url segments')
  const a = token.indexOf('.')
  const b = token.indexOf('.', a + 1)
  return {
    header: parseHeader(token.slice(0, a)),
    payload: jsonObject(token.slice(a + 1, b)),
    signature: token.slice(b + 1),
    input: token.slice(0, b)
  }
}

/**
 * Hashing a whole token for a Map look-up costs about a microsecond (V8 hashes every character of
 * each new header string); the last 48 characters of an RSA signature are 36 random bytes and key the
 * cache as well. A token that merely shares them (a forgery reusing a signature tail) fails the
 * full-string comparison and is verified normally.
 */
function cacheKey (token: string): string {
  return token.length > 48 ? token.slice(-48) : token
}

function isFiniteNumber (v: unknown): v is number {
  return typeof v === 'number' && Number.isFinite(v)
}

function isStringArray (v: unknown): v is string[] {
  return Array.isArray(v) && v.every((x) => typeof x === 'string')
}

/** Freezes the user for sharing through the cache; recursion only into nested claim objects. */
function freezeUser (user: VerifiedUser): VerifiedUser {
  Object.freeze(user.permissions)
  Object.freeze(user.scope)
  if (Array.isArray(user.aud)) Object.freeze(user.aud)
  for (const k in user.claims) {
    const v = user.claims[k]
    if (v !== null && typeof v === 'object') deepFreeze(v)
  }
  Object.freeze(user.claims)
  return Object.freeze(user)
}

function deepFreeze (value: object): void {
  if (Object.isFrozen(value)) return
  Object.freeze(value)
  for (const v of Object.values(value)) if (v !== null && typeof v === 'object') deepFreeze(v as object)
}

/**
 * Verifies bearer tokens against the issuers' key maps: pinned algorithms, issuer allowlist,
 * audience, required `exp`, `nbf`/`iat` within the clock tolerance, RSA keys of >= 2048 bits, and a
 * verified-token cache bounded by each token's `exp` and by its key still being in the JWKS.
 */
export class TokenVerifier {
  #options: ResolvedOptions
  #issuers: Map<string, IssuerKeys>
  #metrics: AuthMetrics
  /** Keyed by the signature's last characters (see cacheKey); the entry holds the whole token. */
  #cache = new Map<string, CachedVerification>()

  constructor (options: ResolvedOptions, issuers: Map<string, IssuerKeys>, metrics: AuthMetrics) {
    this.#options = options
    this.#issuers = issuers
    this.#metrics = metrics
  }

  get cacheSize (): number {
    return this.#cache.size
  }

  /** Drops cached verifications made with keys that left an issuer's JWKS. */
  flush (issuer: string, kids: string[]): void {
    const gone = new Set(kids)
    for (const [k, c] of this.#cache) {
      if (c.issuer.config.issuer === issuer && gone.has(c.kid)) this.#cache.delete(k)
    }
  }

  /** The cached user for a token, when still valid now; undefined otherwise. */
  cached (token: string): VerifiedUser | undefined {
    const k = cacheKey(token)
    const c = this.#cache.get(k)
    if (c === undefined || c.token !== token) return undefined
    const now = this.#options.now()
    const fresh = c.issuer.freshness(now)
    if (now < c.validFrom || now > c.validUntil || c.issuer.keys.get(c.kid) !== c.entry || fresh === 'unavailable') {
      this.#cache.delete(k)
      return undefined
    }
    const feed = c.issuer.revocations
    if (feed !== undefined) {
      try {
        this.#checkRevocation(feed, c.rk!, now)
      } catch (err) {
        this.#cache.delete(k)
        throw err
      }
    }
    if (fresh === 'stale') this.#metrics.staleServed.inc({ issuer: c.issuer.config.issuer })
    return c.user
  }

  /** Throws when the token is revoked, or when the feed is lost past the allowed time and the policy refuses. */
  #checkRevocation (feed: RevocationSource, rk: TokenRevocationKeys, now: number): void {
    if (feed.set.revoked(rk)) throw new AuthFailure('revoked')
    if (this.#options.revocationPolicy === 'refuse' && !feed.live && feed.downFor(now) > this.#options.revocationStaleAfterMs) {
      throw new AuthFailure('revocations_unavailable')
    }
  }

  /**
   * Full verification (no cache read); throws (or rejects with) AuthFailure. Synchronous unless the
   * kid is unknown and a fetch is needed: no promise on the common path.
   */
  verifyUncached (token: string): VerifiedUser | Promise<VerifiedUser> {
    const t = decodeJws(token)
    const { header, payload } = t
    const alg = header.alg
    if (typeof alg !== 'string') throw new AuthFailure('malformed', 'header alg is not a string')
    // No JWS extension is understood here, so any `crit` makes the token unacceptable (RFC 7515 4.1.11).
    if (Object.hasOwn(header, 'crit')) throw new AuthFailure('malformed', 'crit header')
    const iss = payload.iss
    const issuer = typeof iss === 'string' ? this.#issuers.get(iss) : undefined
    if (issuer === undefined) throw new AuthFailure('bad_issuer')
    if (!(issuer.config.algorithms as string[]).includes(alg)) throw new AuthFailure('alg_not_allowed', alg.slice(0, 32))
    const kid = header.kid
    if (typeof kid !== 'string' || kid === '' || kid.length > MAX_KID_LENGTH) throw new AuthFailure('malformed', 'kid')

    const entry = issuer.keys.get(kid)
    if (entry === undefined) return this.#afterKidMiss(token, t, issuer, kid)
    return this.#verifyWithKey(token, t, issuer, kid, entry)
  }

  async #afterKidMiss (token: string, t: DecodedToken, issuer: IssuerKeys, kid: string): Promise<VerifiedUser> {
    const outcome = await issuer.resolveMissing(kid)
    const entry = issuer.keys.get(kid)
    if (entry === undefined) throw new AuthFailure(outcome === 'unavailable' ? 'jwks_unavailable' : 'unknown_kid')
    return this.#verifyWithKey(token, t, issuer, kid, entry)
  }

  #verifyWithKey (token: string, t: DecodedToken, issuer: IssuerKeys, kid: string, entry: KeyEntry): VerifiedUser {
    const alg = t.header.alg as RsaAlgorithm
    const now = this.#options.now()
    const fresh = issuer.freshness(now)
    if (fresh === 'unavailable') throw new AuthFailure('jwks_unavailable')
    if (entry.alg !== undefined && entry.alg !== alg) throw new AuthFailure('alg_not_allowed', `key is ${entry.alg}`)
    // a revoked key verifies nothing, even while it is still in a JWKS held here
    if (issuer.revocations?.set.kidRevoked(kid) === true) throw new AuthFailure('revoked', 'key revoked')

    // Signing input and signature bytes go into one reused buffer (crypto.verify is synchronous, so
    // nothing else can use it meanwhile): no allocation per verification. The input is base64url
    // (checked by decodeJws), so latin1 writes it byte for byte.
    const room = t.input.length + Math.ceil(t.signature.length * 3 / 4)
    const buf = room <= SCRATCH.length ? SCRATCH : Buffer.allocUnsafe(room)
    const n = buf.write(t.input, 0, 'latin1')
    const m = buf.write(t.signature, n, 'base64url')
    if (m !== entry.sigBytes) throw new AuthFailure('bad_signature', 'signature length')
    // Buffer's decoder ignores unused low bits of the last character and a dangling last character,
    // so one signature has many spellings: accept only the canonical one (one token, one string; the
    // token cache and any jti/token deny-list key on that string). Re-encoding the last group suffices.
    const tail = m % 3 === 0 ? 3 : m % 3
    if (t.signature.length !== Math.ceil(m * 4 / 3) ||
      buf.toString('base64url', n + m - tail, n + m) !== t.signature.slice(-(tail + 1))) {
      throw new AuthFailure('bad_signature', 'signature not canonical base64url')
    }
    const ok = cryptoVerify(HASHES[alg], buf.subarray(0, n), alg.startsWith('PS')
      ? { key: entry.key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: constants.RSA_PSS_SALTLEN_DIGEST }
      : entry.key, buf.subarray(n, n + m))
    if (!ok) throw new AuthFailure('bad_signature')

    const user = this.#checkClaims(t.payload, issuer, now)
    const feed = issuer.revocations
    const rk = feed === undefined ? undefined : tokenRevocationKeys(t.payload, kid)
    if (feed !== undefined) this.#checkRevocation(feed, rk!, now)
    if (fresh === 'stale') this.#metrics.staleServed.inc({ issuer: issuer.config.issuer })
    this.#remember(token, user, t.payload, issuer, kid, entry, rk)
    return user
  }

  #checkClaims (payload: Record<string, unknown>, issuer: IssuerKeys, now: number): VerifiedUser {
    const tol = this.#options.clockToleranceMs
    const { exp, nbf, iat, aud, sub, role, permissions, scope, jti } = payload
    if (!isFiniteNumber(exp)) throw new AuthFailure('invalid_claims', 'exp')
    if (now > exp * 1000 + tol) throw new AuthFailure('expired')
    if (Object.hasOwn(payload, 'nbf')) {
      if (!isFiniteNumber(nbf)) throw new AuthFailure('invalid_claims', 'nbf')
      if (now < nbf * 1000 - tol) throw new AuthFailure('not_yet_valid', 'nbf')
    }
    if (Object.hasOwn(payload, 'iat')) {
      if (!isFiniteNumber(iat)) throw new AuthFailure('invalid_claims', 'iat')
      if (now < iat * 1000 - tol) throw new AuthFailure('not_yet_valid', 'iat')
    }
    const auds = typeof aud === 'string' ? [aud] : aud
    if (!isStringArray(auds) || !auds.some((a) => issuer.config.audiences.includes(a))) throw new AuthFailure('bad_audience')
    if (typeof sub !== 'string' || sub === '') throw new AuthFailure('invalid_claims', 'sub')
    for (const claim of this.#options.requiredClaims) {
      if (!Object.hasOwn(payload, claim)) throw new AuthFailure('invalid_claims', claim)
    }
    if (role !== undefined && typeof role !== 'string') throw new AuthFailure('invalid_claims', 'role')
    if (permissions !== undefined && !isStringArray(permissions)) throw new AuthFailure('invalid_claims', 'permissions')
    if (scope !== undefined && typeof scope !== 'string') throw new AuthFailure('invalid_claims', 'scope')
    if (jti !== undefined && typeof jti !== 'string') throw new AuthFailure('invalid_claims', 'jti')
    const user: VerifiedUser = {
      sub,
      iss: payload.iss as string,
      aud: aud as string | string[],
      permissions: permissions ?? [],
      scope: scope === undefined ? [] : scope.split(' ').filter((s) => s !== ''),
      exp,
      claims: payload
    }
    if (role !== undefined) user.role = role
    if (iat !== undefined) user.iat = iat as number
    if (jti !== undefined) user.jti = jti
    return freezeUser(user)
  }

  #remember (token: string, user: VerifiedUser, payload: Record<string, unknown>, issuer: IssuerKeys, kid: string, entry: KeyEntry, rk: TokenRevocationKeys | undefined): void {
    const max = this.#options.tokenCacheMax
    if (max === 0) return
    const tol = this.#options.clockToleranceMs
    let validFrom = Number.NEGATIVE_INFINITY
    if (isFiniteNumber(payload.nbf)) validFrom = payload.nbf * 1000 - tol
    if (isFiniteNumber(payload.iat)) validFrom = Math.max(validFrom, payload.iat * 1000 - tol)
    if (this.#cache.size >= max) {
      // Oldest insertion first: Map iteration order.
      const oldest = this.#cache.keys().next()
      if (oldest.done !== true) this.#cache.delete(oldest.value)
    }
    this.#cache.set(cacheKey(token), { token, user, validFrom, validUntil: user.exp * 1000 + tol, issuer, kid, entry, rk })
  }
}
