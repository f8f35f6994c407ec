import { durationText, envDuration, type Env, type EnvGroup } from '../lib/env.js'
import { CLOCK_SKEW_ENV } from '../lib/jwks-env.js'
import { ConfigError } from '../lib/errors.js'
import { DEFAULT_CLOCK_TOLERANCE, DEFAULT_KEY_CACHE_TTL } from '@portcullis/jwks-auth'

/**
 * The timings of the key lifecycle, in seconds (docs/design.md, Key lifecycle). Shared by the rotation
 * worker (when to pre-publish, activate, prune) and the auth service (token lifetime, skew, JWKS
 * Cache-Control).
 */
export interface KeyTimings {
  /** `T`: longest access-token lifetime. @defaultValue 900 (15m) */
  accessTokenTtl: number
  /** `S`: tolerated clock skew between issuer and verifiers. @defaultValue 60 */
  clockSkew: number
  /** `C`: longest time a verifier caches the JWKS. @defaultValue 300 */
  verifierCacheMax: number
  /** `P`: time for every signer to notice a new active key. @defaultValue 5 */
  signerPropagation: number
  /** How long a new key is published (`pending`) before it signs. @defaultValue 3600 (1h) */
  prePublish: number
  /** How long a retired key stays published after it stopped signing. @defaultValue 3600 (1h) */
  retireWindow: number
  /** `R`: rotation period, the life of a key as the active one. @defaultValue 604800 (7d) */
  period: number
}

export const DEFAULT_KEY_TIMINGS: Readonly<KeyTimings> = Object.freeze({
  accessTokenTtl: 900,
  // the verifiers' own defaults: the plan holds for a verifier left at its defaults
  clockSkew: DEFAULT_CLOCK_TOLERANCE,
  verifierCacheMax: DEFAULT_KEY_CACHE_TTL,
  signerPropagation: 5,
  prePublish: 3600,
  retireWindow: 3600,
  period: 7 * 86400
})

/** The env var behind each timing, for messages. */
export const KEY_TIMING_ENV: Readonly<Record<keyof KeyTimings, string>> = Object.freeze({
  accessTokenTtl: 'ACCESS_TOKEN_TTL',
  clockSkew: 'CLOCK_SKEW',
  verifierCacheMax: 'VERIFIER_CACHE_MAX',
  signerPropagation: 'SIGNER_PROPAGATION',
  prePublish: 'KEY_PREPUBLISH',
  retireWindow: 'KEY_RETIRE_WINDOW',
  period: 'KEY_ROTATION_PERIOD'
})

/**
 * The key-lifecycle timings as env variables, with the rules validateKeyTimings enforces: read by the
 * rotation worker, `portcullis keys` and the auth service. CLOCK_SKEW is the verifiers' row (one variable).
 */
export const KEY_TIMINGS_ENV: EnvGroup = {
  title: 'key timings',
  rows: [
    [KEY_TIMING_ENV.accessTokenTtl, durationText(DEFAULT_KEY_TIMINGS.accessTokenTtl), '`T`: longest access-token lifetime (the auth service issues tokens with it)'],
    CLOCK_SKEW_ENV,
    [KEY_TIMING_ENV.verifierCacheMax, durationText(DEFAULT_KEY_TIMINGS.verifierCacheMax), '`C`: longest time any verifier caches the JWKS'],
    [KEY_TIMING_ENV.signerPropagation, durationText(DEFAULT_KEY_TIMINGS.signerPropagation), '`P`: time for every signer to notice a new active key'],
    [KEY_TIMING_ENV.prePublish, durationText(DEFAULT_KEY_TIMINGS.prePublish), 'how long a new key is published before it signs; >= VERIFIER_CACHE_MAX + CLOCK_SKEW + SIGNER_PROPAGATION'],
    [KEY_TIMING_ENV.retireWindow, durationText(DEFAULT_KEY_TIMINGS.retireWindow), 'how long a retired key stays published; >= SIGNER_PROPAGATION + ACCESS_TOKEN_TTL + CLOCK_SKEW + VERIFIER_CACHE_MAX (raising ACCESS_TOKEN_TTL may need a longer KEY_RETIRE_WINDOW)'],
    [KEY_TIMING_ENV.period, durationText(DEFAULT_KEY_TIMINGS.period), '`R`: how long a key signs before the next one takes over; longer than KEY_PREPUBLISH']
  ]
}

/** Smallest safe pre-publish window: every verifier cache has expired, with skew and propagation. */
export function minPrePublish (t: KeyTimings): number {
  return t.verifierCacheMax + t.clockSkew + t.signerPropagation
}

/** Smallest safe retire window: the last token a retired key signed has expired everywhere. */
export function minRetireWindow (t: KeyTimings): number {
  return t.signerPropagation + t.accessTokenTtl + t.clockSkew + t.verifierCacheMax
}

/**
 * Checks the lifecycle rules of docs/design.md and throws a ConfigError naming the setting and the rule it breaks.
 * Also used for timings built in code (tests), so the same rules hold everywhere.
 */
export function validateKeyTimings (t: KeyTimings): KeyTimings {
  const E = KEY_TIMING_ENV
  for (const k of Object.keys(E) as Array<keyof KeyTimings>) {
    const v = t[k]
    const min = k === 'clockSkew' ? 0 : Number.MIN_VALUE
    if (!Number.isFinite(v) || v < min) throw new ConfigError(E[k], `must be a ${k === 'clockSkew' ? 'non-negative' : 'positive'} duration, got ${v}s`)
  }
  if (t.prePublish < minPrePublish(t)) {
    throw new ConfigError(E.prePublish, `must be >= ${E.verifierCacheMax} + ${E.clockSkew} + ${E.signerPropagation} = ${minPrePublish(t)}s so that every verifier holds a key before it signs, got ${t.prePublish}s`)
  }
  if (t.retireWindow < minRetireWindow(t)) {
    throw new ConfigError(E.retireWindow, `must be >= ${E.signerPropagation} + ${E.accessTokenTtl} + ${E.clockSkew} + ${E.verifierCacheMax} = ${minRetireWindow(t)}s so that every token a retired key signed expires while it is still published, got ${t.retireWindow}s`)
  }
  if (t.period <= t.prePublish) {
    throw new ConfigError(E.period, `must be longer than ${E.prePublish} (${t.prePublish}s) so the next key can be pre-published within one period, got ${t.period}s`)
  }
  return t
}

/**
 * Reads ACCESS_TOKEN_TTL, CLOCK_SKEW, VERIFIER_CACHE_MAX, SIGNER_PROPAGATION, KEY_PREPUBLISH,
 * KEY_RETIRE_WINDOW and KEY_ROTATION_PERIOD (durations: `900`, `15m`, `1h`, `7d`) and validates them.
 * @throws ConfigError naming the setting and the rule
 */
export function keyTimingsFromEnv (env: Env): KeyTimings {
  const d = DEFAULT_KEY_TIMINGS
  const E = KEY_TIMING_ENV
  return validateKeyTimings({
    accessTokenTtl: envDuration(env, E.accessTokenTtl, d.accessTokenTtl, { min: 1 }),
    clockSkew: envDuration(env, E.clockSkew, d.clockSkew, { min: 0 }),
    verifierCacheMax: envDuration(env, E.verifierCacheMax, d.verifierCacheMax, { min: 1 }),
    signerPropagation: envDuration(env, E.signerPropagation, d.signerPropagation, { min: 0.001 }),
    prePublish: envDuration(env, E.prePublish, d.prePublish, { min: 1 }),
    retireWindow: envDuration(env, E.retireWindow, d.retireWindow, { min: 1 }),
    period: envDuration(env, E.period, d.period, { min: 1 })
  })
}

/**
 * `max-age` for the JWKS response: at most half the pre-publish window (a verifier refreshing on
 * that cadence sees a pending key at least twice before it signs) and never above the verifier cache
 * bound the timings assume.
 */
export function jwksCacheMaxAge (t: KeyTimings): number {
  return Math.max(0, Math.floor(Math.min(t.prePublish / 2, t.verifierCacheMax)))
}
