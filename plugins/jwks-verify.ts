import { constants, verify as cryptoVerify } from 'node:crypto'
import { createDecoder } from 'fast-jwt'
import type { AuthMetrics } from './auth-metrics.js'
import { AuthFailure } from './auth-errors.js'
import type { RsaAlgorithm, ResolvedOptions } from './auth-options.js'
import type { KeyEntry } from './jwks-keys.js'
import type { IssuerKeys } from './jwks-refresher.js'

/** `request.user` after a successful verification. Frozen: one object may serve many requests from the cache. */
export interface VerifiedUser {
  sub: string
  iss: string
  aud: string | string[]
  role?: string
  /** `resource:action` strings from the `permissions` claim. */
  permissions: string[]
  /** From the space-separated `scope` claim (client-credentials tokens). */
  scope: string[]
  exp: number
  iat?: number
  jti?: string
  /** Every claim of the token, as signed. */
  claims: Record<string, unknown>
}

interface CachedVerification {
  user: VerifiedUser
  validFrom: number
  validUntil: number
  issuer: IssuerKeys
  kid: string
  entry: KeyEntry
}

interface DecodedToken {
  header: Record<string, unknown>
  payload: Record<string, unknown>
  signature: string
  input: string
}

const MAX_KID_LENGTH = 256
const HASHES: Record<RsaAlgorithm, string> = {
  RS256: 'sha256', RS384: 'sha384', RS512: 'sha512', PS256: 'sha256', PS384: 'sha384', PS512: 'sha512'
}

// fast-jwt's decoder: strict base64url per segment, header and payload must be JSON objects.
const decode = createDecoder({ complete: true }) as (token: string) => DecodedToken

function isFiniteNumber (v: unknown): v is number {
  return typeof v === 'number' && Number.isFinite(v)
}

function isStringArray (v: unknown): v is string[] {
  return Array.isArray(v) && v.every((x) => typeof x === 'string')
}

function deepFreeze<T> (value: T): T {
  if (value !== null && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value)
    for (const v of Object.values(value)) deepFreeze(v)
  }
  return value
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
    for (const [token, c] of this.#cache) {
      if (c.issuer.config.issuer === issuer && gone.has(c.kid)) this.#cache.delete(token)
    }
  }

  /** The cached user for a token, when still valid now; undefined otherwise. */
  cached (token: string): VerifiedUser | undefined {
    const c = this.#cache.get(token)
    if (c === undefined) return undefined
    const now = this.#options.now()
    const fresh = c.issuer.freshness(now)
    if (now < c.validFrom || now > c.validUntil || c.issuer.keys.get(c.kid) !== c.entry || fresh === 'unavailable') {
      this.#cache.delete(token)
      return undefined
    }
    if (fresh === 'stale') this.#metrics.staleServed.inc({ issuer: c.issuer.config.issuer })
    return c.user
  }

  /** Full verification (no cache read); throws AuthFailure with the reason. */
  async verifyUncached (token: string): Promise<VerifiedUser> {
    let t: DecodedToken
    try {
      t = decode(token)
    } catch {
      throw new AuthFailure('malformed')
    }
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

    let entry = issuer.keys.get(kid)
    if (entry === undefined) {
      const outcome = await issuer.resolveMissing(kid)
      entry = issuer.keys.get(kid)
      if (entry === undefined) throw new AuthFailure(outcome === 'unavailable' ? 'jwks_unavailable' : 'unknown_kid')
    }
    const now = this.#options.now()
    const fresh = issuer.freshness(now)
    if (fresh === 'unavailable') throw new AuthFailure('jwks_unavailable')
    if (entry.alg !== undefined && entry.alg !== alg) throw new AuthFailure('alg_not_allowed', `key is ${entry.alg}`)

    const sig = Buffer.from(t.signature, 'base64url')
    if (sig.length !== entry.sigBytes) throw new AuthFailure('bad_signature', 'signature length')
    const pss = alg.startsWith('PS')
    const ok = cryptoVerify(HASHES[alg as RsaAlgorithm], Buffer.from(t.input), pss
      ? { key: entry.key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: constants.RSA_PSS_SALTLEN_DIGEST }
      : entry.key, sig)
    if (!ok) throw new AuthFailure('bad_signature')

    const user = this.#checkClaims(payload, issuer, now)
    if (fresh === 'stale') this.#metrics.staleServed.inc({ issuer: issuer.config.issuer })
    this.#remember(token, user, payload, issuer, kid, entry)
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
    return deepFreeze(user)
  }

  #remember (token: string, user: VerifiedUser, payload: Record<string, unknown>, issuer: IssuerKeys, kid: string, entry: KeyEntry): void {
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
    this.#cache.set(token, { user, validFrom, validUntil: user.exp * 1000 + tol, issuer, kid, entry })
  }
}
