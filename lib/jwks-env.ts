import { durationText, envDuration, envEnum, envInt, type EnvGroup, type EnvRow, type Env } from './env.js'
import { DEFAULT_CLOCK_TOLERANCE, DEFAULT_KEY_CACHE_TTL, DEFAULT_KID_MISS_COOLDOWN, DEFAULT_REFRESH_INTERVAL, DEFAULT_REVOCATION_STALE_AFTER, DEFAULT_TOKEN_CACHE_MAX, REVOCATION_POLICIES, type JwksAuthOptions } from '@portcullis/jwks-auth'

/**
 * CLOCK_SKEW, one variable for two readers: the verifiers' leeway (this file) and the S of the key
 * timings (store/key-timings.ts, which shows this same row in its group).
 */
export const CLOCK_SKEW_ENV: EnvRow = ['CLOCK_SKEW', durationText(DEFAULT_CLOCK_TOLERANCE), '`S`: clock skew tolerated between the issuer and the verifiers: their leeway on exp, nbf and iat, and the S the rotation worker plans its windows with; set it alike in every process']

/** The verifier-side JWKS settings every verifying process (gateway, services) reads from its env. */
export const JWKS_ENV: EnvGroup = {
  title: 'JWKS verifier',
  rows: [
    ['JWKS_REFRESH_INTERVAL', durationText(DEFAULT_REFRESH_INTERVAL), 'how often the issuer\'s JWKS is re-fetched in the background (conditional request); keep it well under KEY_PREPUBLISH'],
    ['JWKS_CACHE_TTL', durationText(DEFAULT_KEY_CACHE_TTL), 'how long a fetched JWKS counts as fresh; at most VERIFIER_CACHE_MAX'],
    ['JWKS_KID_MISS_COOLDOWN', durationText(DEFAULT_KID_MISS_COOLDOWN), 'least time between two fetches caused by tokens with an unknown kid (one conditional request, 304 while unchanged); a fetch that finds the set changed lifts it, so a key that signs without pre-publication verifies within about 5 s'],
    ['JWKS_TOKEN_CACHE_MAX', String(DEFAULT_TOKEN_CACHE_MAX), 'verified tokens cached per process (~1.2 KB each; 0 disables)'],
    CLOCK_SKEW_ENV,
    ['REVOCATION_STALE_AFTER', durationText(DEFAULT_REVOCATION_STALE_AFTER), 'how long an issuer\'s revocation feed may be lost before REVOCATION_POLICY applies'],
    ['REVOCATION_POLICY', 'serve', `past REVOCATION_STALE_AFTER without the feed: ${REVOCATION_POLICIES.join(' or ')} (serve keeps accepting otherwise valid tokens, counted by portcullis_revocation_feed_up; refuse answers 401 until the feed is back)`]
  ]
}

/**
 * jwks-auth options from `JWKS_REFRESH_INTERVAL`, `JWKS_CACHE_TTL`, `JWKS_KID_MISS_COOLDOWN` (seconds
 * or with a unit), `JWKS_TOKEN_CACHE_MAX` and `CLOCK_SKEW` (the leeway on `exp`, `nbf`, `iat`: the same
 * S the rotation worker keeps a retired key published for, so a token is never accepted past it).
 */
export function jwksOptionsFromEnv (env: Env): Pick<JwksAuthOptions, 'refreshInterval' | 'keyCacheTtl' | 'kidMissCooldown' | 'tokenCacheMax' | 'clockTolerance' | 'revocationStaleAfter' | 'revocationPolicy'> {
  return {
    revocationStaleAfter: envDuration(env, 'REVOCATION_STALE_AFTER', DEFAULT_REVOCATION_STALE_AFTER, { min: 0 }),
    revocationPolicy: envEnum(env, 'REVOCATION_POLICY', REVOCATION_POLICIES, 'serve'),
    // the verifier's default leeway is also the rotation worker's default S (store/key-timings.ts)
    clockTolerance: envDuration(env, 'CLOCK_SKEW', DEFAULT_CLOCK_TOLERANCE, { min: 0 }),
    tokenCacheMax: envInt(env, 'JWKS_TOKEN_CACHE_MAX', DEFAULT_TOKEN_CACHE_MAX, { min: 0, max: 10_000_000 }),
    refreshInterval: envDuration(env, 'JWKS_REFRESH_INTERVAL', DEFAULT_REFRESH_INTERVAL, { min: 0.01 }),
    keyCacheTtl: envDuration(env, 'JWKS_CACHE_TTL', DEFAULT_KEY_CACHE_TTL, { min: 1 }),
    kidMissCooldown: envDuration(env, 'JWKS_KID_MISS_COOLDOWN', DEFAULT_KID_MISS_COOLDOWN, { min: 0 })
  }
}
