import { envDuration, envInt, type Env } from './env.js'
import { DEFAULT_CLOCK_TOLERANCE, DEFAULT_KEY_CACHE_TTL, DEFAULT_KID_MISS_COOLDOWN, DEFAULT_REFRESH_INTERVAL, DEFAULT_TOKEN_CACHE_MAX, type JwksAuthOptions } from '@portcullis/jwks-auth'

/** The verifier-side JWKS timings every verifying process (gateway, services) reads from its env. */
export const JWKS_ENV: Array<[name: string, def: string, meaning: string]> = [
  ['JWKS_REFRESH_INTERVAL', `${DEFAULT_REFRESH_INTERVAL}s`, 'how often the issuer\'s JWKS is re-fetched in the background (conditional request); keep it well under KEY_PREPUBLISH'],
  ['JWKS_CACHE_TTL', `${DEFAULT_KEY_CACHE_TTL}s`, 'how long a fetched JWKS counts as fresh; at most VERIFIER_CACHE_MAX'],
  ['JWKS_KID_MISS_COOLDOWN', `${DEFAULT_KID_MISS_COOLDOWN}s`, 'least time between two fetches caused by tokens with an unknown kid'],
  ['JWKS_TOKEN_CACHE_MAX', String(DEFAULT_TOKEN_CACHE_MAX), 'verified tokens cached per process (~1.3 KB each; 0 disables)'],
  ['CLOCK_SKEW', `${DEFAULT_CLOCK_TOLERANCE}s`, 'leeway on exp, nbf and iat: the S the rotation worker plans its windows with; set it alike everywhere']
]

/**
 * jwks-auth options from `JWKS_REFRESH_INTERVAL`, `JWKS_CACHE_TTL`, `JWKS_KID_MISS_COOLDOWN` (seconds
 * or with a unit), `JWKS_TOKEN_CACHE_MAX` and `CLOCK_SKEW` (the leeway on `exp`, `nbf`, `iat`: the same
 * S the rotation worker keeps a retired key published for, so a token is never accepted past it).
 */
export function jwksOptionsFromEnv (env: Env): Pick<JwksAuthOptions, 'refreshInterval' | 'keyCacheTtl' | 'kidMissCooldown' | 'tokenCacheMax' | 'clockTolerance'> {
  return {
    // the verifier's default leeway is also the rotation worker's default S (store/key-timings.ts)
    clockTolerance: envDuration(env, 'CLOCK_SKEW', DEFAULT_CLOCK_TOLERANCE, { min: 0 }),
    tokenCacheMax: envInt(env, 'JWKS_TOKEN_CACHE_MAX', DEFAULT_TOKEN_CACHE_MAX, { min: 0, max: 10_000_000 }),
    refreshInterval: envDuration(env, 'JWKS_REFRESH_INTERVAL', DEFAULT_REFRESH_INTERVAL, { min: 0.01 }),
    keyCacheTtl: envDuration(env, 'JWKS_CACHE_TTL', DEFAULT_KEY_CACHE_TTL, { min: 1 }),
    kidMissCooldown: envDuration(env, 'JWKS_KID_MISS_COOLDOWN', DEFAULT_KID_MISS_COOLDOWN, { min: 0 })
  }
}
