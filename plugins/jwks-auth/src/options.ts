import type { Registry } from '@portcullis/metrics'

/** RSA signature algorithms the verifier can pin. HMAC, `none` and EC are refused at registration. */
export const SUPPORTED_ALGORITHMS = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512'] as const
export type RsaAlgorithm = typeof SUPPORTED_ALGORITHMS[number]

export const DEFAULT_ALGORITHMS: RsaAlgorithm[] = ['RS256']
/** Seconds of leeway for `exp`, `nbf` and `iat` (`S` in docs/design.md). */
export const DEFAULT_CLOCK_TOLERANCE = 60
/** Seconds a fetched JWKS counts as fresh (`C` in docs/design.md, the longest verifier cache). */
export const DEFAULT_KEY_CACHE_TTL = 300
/**
 * Seconds after a kid-miss fetch during which further unknown kids are refused without fetching.
 * Short enough that a key switched to without pre-publication (an emergency revoke) verifies
 * within about 5 s under a random-kid flood; each fetch is one conditional request, answered 304
 * while the set is unchanged.
 */
export const DEFAULT_KID_MISS_COOLDOWN = 2
/** Seconds between background conditional (ETag) refreshes of every issuer's JWKS. */
export const DEFAULT_REFRESH_INTERVAL = 30
/** Seconds past freshness that the last good keys keep verifying while the issuer is down or answers 5xx. */
export const DEFAULT_MAX_STALE_AGE = 3600
/** Seconds before a JWKS fetch is aborted. */
export const DEFAULT_FETCH_TIMEOUT = 5
/** Verified tokens kept in memory (0 disables the cache). */
/** ~1.2 KB of heap per entry (the token and the verified user): ~6 MB when full. */
export const DEFAULT_TOKEN_CACHE_MAX = 5_000
/** Seconds a revocation feed may be lost before `revocationPolicy` applies. */
export const DEFAULT_REVOCATION_STALE_AFTER = 30
export const REVOCATION_POLICIES = ['serve', 'refuse'] as const
export type RevocationPolicy = typeof REVOCATION_POLICIES[number]
/** Shortest RSA modulus accepted from a JWKS. */
export const MIN_RSA_BITS = 2048
/** Longest bearer token accepted, in characters (Node already caps headers at 16 KiB). */
export const MAX_TOKEN_LENGTH = 8192
/** Most keys kept from one JWKS; the rest are ignored (a JWKS is a handful of keys). */
export const MAX_JWKS_KEYS = 50
/** Claims every token must carry whatever `requiredClaims` says. */
export const ALWAYS_REQUIRED_CLAIMS = ['exp', 'iss', 'aud', 'sub'] as const

export interface IssuerOptions {
  /** Exact `iss` value accepted (the allowlist entry). */
  issuer: string
  /** Where this issuer's keys live. @defaultValue `${issuer}/.well-known/jwks.json` */
  jwksUri?: string
  /** Accepted `aud` value(s): the token's `aud` must contain one of them. */
  audience: string | string[]
  /** Pinned algorithms. @defaultValue ['RS256'] */
  algorithms?: string[]
  /**
   * Where the issuer's revocations come from: revoked sessions, users, tokens and keys are refused
   * within about a second, with no call per request. An `http(s)://` URL is its revocation feed
   * (Server-Sent Events; Portcullis' auth service serves it at `<issuer>/auth/revocations`); a
   * `redis(s)://` URL is the Redis the issuer publishes them to (Portcullis' auth service with
   * REDIS_URL set; needs the ioredis package). @defaultValue none: tokens are valid until they expire
   */
  revocations?: string
}

export interface JwksAuthOptions {
  issuers: IssuerOptions[]
  /** Seconds of clock skew allowed on `exp`/`nbf`/`iat`. @defaultValue 60 */
  clockTolerance?: number
  /** Extra claims that must be present (`exp`, `iss`, `aud`, `sub` always are). @defaultValue [] */
  requiredClaims?: string[]
  /** Seconds a fetched JWKS is fresh. @defaultValue 300 */
  keyCacheTtl?: number
  /** Seconds between kid-miss fetches of one issuer (lifted when a fetch finds the set changed). @defaultValue 2 */
  kidMissCooldown?: number
  /** Seconds between background conditional refreshes. @defaultValue 30 */
  refreshInterval?: number
  /** Seconds past freshness that keys keep working when the issuer is unreachable or answers 5xx. @defaultValue 3600 */
  maxStaleAge?: number
  /** Seconds before a JWKS fetch is aborted. @defaultValue 5 */
  fetchTimeout?: number
  /** Verified tokens cached (bounded by each token's `exp`); 0 disables. @defaultValue 5000 */
  tokenCacheMax?: number
  /** Registry for the `portcullis_auth_*` / `portcullis_jwks_*` metrics. @defaultValue app.metricsRegistry, else a private one */
  registry?: Registry
  /** Every route needs a valid token unless its config says `auth: false`. @defaultValue true */
  global?: boolean
  /** Clock in epoch milliseconds, for tests. @defaultValue Date.now */
  now?: () => number
  /**
   * Seconds an issuer's revocation feed may be lost (its connection down, reconnecting) before
   * `revocationPolicy` applies. @defaultValue 30
   */
  revocationStaleAfter?: number
  /**
   * Past `revocationStaleAfter`: `serve` keeps accepting tokens that are otherwise valid (counted
   * and alerted: portcullis_revocation_feed_up), `refuse` answers 401 for that issuer's tokens
   * until the feed is back. @defaultValue serve
   */
  revocationPolicy?: RevocationPolicy
}

export interface ResolvedIssuer {
  issuer: string
  jwksUri: string
  audiences: string[]
  algorithms: RsaAlgorithm[]
  revocations: string | undefined
}

export interface ResolvedOptions {
  issuers: ResolvedIssuer[]
  clockToleranceMs: number
  requiredClaims: string[]
  keyCacheTtlMs: number
  kidMissCooldownMs: number
  refreshIntervalMs: number
  maxStaleAgeMs: number
  fetchTimeoutMs: number
  tokenCacheMax: number
  registry: Registry | undefined
  global: boolean
  now: () => number
  revocationStaleAfterMs: number
  revocationPolicy: RevocationPolicy
}

/** A bad plugin option: the message names the option and what is wrong, and fails the boot. */
export class AuthOptionsError extends Error {
  readonly code = 'PORTCULLIS_AUTH_OPTIONS'
  constructor (option: string, problem: string) {
    super(`jwks-auth option "${option}": ${problem}`)
    this.name = 'AuthOptionsError'
  }
}

function seconds (value: unknown, name: string, fallback: number, min = 0): number {
  if (value === undefined) return fallback
  if (typeof value !== 'number' || !Number.isFinite(value) || value < min) {
    throw new AuthOptionsError(name, `must be a finite number of seconds >= ${min}, got ${JSON.stringify(value)}`)
  }
  return value
}

/** The issuer's revocation feed (http, https) or its Redis (redis, rediss; the password never appears in a message). */
function revocationsUrl (value: unknown, name: string): string {
  if (typeof value === 'string' && /^rediss?:\/\//i.test(value)) {
    try {
      return new URL(value).href
    } catch {
      throw new AuthOptionsError(name, 'is not a valid redis:// URL')
    }
  }
  if (typeof value === 'string' && !/^https?:\/\//i.test(value) && /^[a-z][a-z0-9+.-]*:/i.test(value)) {
    throw new AuthOptionsError(name, `must be an http(s) URL (a revocation feed) or a redis(s) URL, got ${value.slice(0, value.indexOf(':') + 1)}`)
  }
  return httpUrl(value, name).href
}

function httpUrl (value: unknown, name: string): URL {
  if (typeof value !== 'string' || value === '') throw new AuthOptionsError(name, 'must be a non-empty string')
  let url: URL
  try {
    url = new URL(value)
  } catch {
    throw new AuthOptionsError(name, `must be an absolute http(s) URL, got ${JSON.stringify(value)}`)
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new AuthOptionsError(name, `must use http or https, got ${url.protocol}`)
  }
  return url
}

function resolveIssuer (raw: unknown, i: number): ResolvedIssuer {
  const at = `issuers[${i}]`
  if (raw === null || typeof raw !== 'object') throw new AuthOptionsError(at, 'must be an object')
  const o = raw as Partial<IssuerOptions>
  httpUrl(o.issuer, `${at}.issuer`)
  const issuer = o.issuer as string
  const jwksUri = o.jwksUri ?? `${issuer.replace(/\/+$/, '')}/.well-known/jwks.json`
  const uri = httpUrl(jwksUri, `${at}.jwksUri`)
  if (uri.pathname.endsWith('/') || uri.hash !== '' || uri.search !== '') {
    throw new AuthOptionsError(`${at}.jwksUri`, 'must name a document (no trailing slash, query or fragment)')
  }
  const audiences = typeof o.audience === 'string' ? [o.audience] : o.audience
  if (!Array.isArray(audiences) || audiences.length === 0 || !audiences.every((a) => typeof a === 'string' && a !== '')) {
    throw new AuthOptionsError(`${at}.audience`, 'must be a non-empty string or a non-empty array of non-empty strings')
  }
  const algorithms = o.algorithms ?? DEFAULT_ALGORITHMS
  if (!Array.isArray(algorithms) || algorithms.length === 0) {
    throw new AuthOptionsError(`${at}.algorithms`, 'must be a non-empty array')
  }
  for (const alg of algorithms) {
    if (!(SUPPORTED_ALGORITHMS as readonly string[]).includes(alg)) {
      throw new AuthOptionsError(`${at}.algorithms`, `${JSON.stringify(alg)} is not supported (use ${SUPPORTED_ALGORITHMS.join(', ')})`)
    }
  }
  const revocations = o.revocations === undefined ? undefined : revocationsUrl(o.revocations, `${at}.revocations`)
  return { issuer, jwksUri: uri.href, audiences: [...audiences], algorithms: [...algorithms] as RsaAlgorithm[], revocations }
}

/** Validates the plugin options once, at registration; every bad option gets one message naming it. */
export function resolveOptions (opts: JwksAuthOptions): ResolvedOptions {
  if (opts === null || typeof opts !== 'object') throw new AuthOptionsError('options', 'must be an object')
  if (!Array.isArray(opts.issuers) || opts.issuers.length === 0) {
    throw new AuthOptionsError('issuers', 'must be a non-empty array of { issuer, audience, jwksUri?, algorithms? }')
  }
  const issuers = opts.issuers.map(resolveIssuer)
  const seen = new Set<string>()
  for (const i of issuers) {
    if (seen.has(i.issuer)) throw new AuthOptionsError('issuers', `issuer ${i.issuer} is listed twice`)
    seen.add(i.issuer)
  }
  const requiredClaims = opts.requiredClaims ?? []
  if (!Array.isArray(requiredClaims) || !requiredClaims.every((c) => typeof c === 'string' && c !== '')) {
    throw new AuthOptionsError('requiredClaims', 'must be an array of claim names')
  }
  const tokenCacheMax = opts.tokenCacheMax ?? DEFAULT_TOKEN_CACHE_MAX
  if (!Number.isInteger(tokenCacheMax) || tokenCacheMax < 0) {
    throw new AuthOptionsError('tokenCacheMax', `must be an integer >= 0, got ${JSON.stringify(opts.tokenCacheMax)}`)
  }
  if (opts.global !== undefined && typeof opts.global !== 'boolean') throw new AuthOptionsError('global', 'must be a boolean')
  if (opts.now !== undefined && typeof opts.now !== 'function') throw new AuthOptionsError('now', 'must be a function returning epoch ms')
  if (opts.registry !== undefined && (opts.registry === null || typeof opts.registry.registerMetric !== 'function')) {
    throw new AuthOptionsError('registry', 'must be a prom-client Registry')
  }
  const refreshInterval = seconds(opts.refreshInterval, 'refreshInterval', DEFAULT_REFRESH_INTERVAL, 0.01)
  const fetchTimeout = seconds(opts.fetchTimeout, 'fetchTimeout', DEFAULT_FETCH_TIMEOUT, 0.01)
  const revocationPolicy = opts.revocationPolicy ?? 'serve'
  if (!(REVOCATION_POLICIES as readonly string[]).includes(revocationPolicy)) {
    throw new AuthOptionsError('revocationPolicy', `must be one of ${REVOCATION_POLICIES.join(', ')}, got ${JSON.stringify(opts.revocationPolicy)}`)
  }
  return {
    revocationStaleAfterMs: seconds(opts.revocationStaleAfter, 'revocationStaleAfter', DEFAULT_REVOCATION_STALE_AFTER) * 1000,
    revocationPolicy,
    issuers,
    clockToleranceMs: seconds(opts.clockTolerance, 'clockTolerance', DEFAULT_CLOCK_TOLERANCE) * 1000,
    requiredClaims: [...new Set([...ALWAYS_REQUIRED_CLAIMS, ...requiredClaims])],
    keyCacheTtlMs: seconds(opts.keyCacheTtl, 'keyCacheTtl', DEFAULT_KEY_CACHE_TTL, 1) * 1000,
    kidMissCooldownMs: seconds(opts.kidMissCooldown, 'kidMissCooldown', DEFAULT_KID_MISS_COOLDOWN) * 1000,
    refreshIntervalMs: refreshInterval * 1000,
    maxStaleAgeMs: seconds(opts.maxStaleAge, 'maxStaleAge', DEFAULT_MAX_STALE_AGE) * 1000,
    fetchTimeoutMs: fetchTimeout * 1000,
    tokenCacheMax,
    registry: opts.registry,
    global: opts.global ?? true,
    now: opts.now ?? Date.now
  }
}
