import { durationText, envDuration, envInt, envList, envString, envUrl, LOG_ENV, logLevelFromEnv, type Env, type EnvTable, type LogLevel, type ProcessEnv } from '../lib/env.js'
import { DEFAULT_DRAIN_DELAY } from '../lib/drain.js'
import { ConfigError } from '../lib/errors.js'
import { dbOptionsFromEnv, STORE_ENV } from '../store/config.js'
import type { DbOptions } from '../store/db.js'
import { DEFAULT_SCRYPT_PARAMS, scryptParamsFromEnv, type ScryptParams } from '../store/password.js'
import { jwksCacheMaxAge, KEY_TIMINGS_ENV, keyTimingsFromEnv, type KeyTimings } from '../store/key-timings.js'
import { SECRETS_ENV } from '../store/secrets.js'
import { DEFAULT_REFRESH_ABSOLUTE_TTL, DEFAULT_REFRESH_IDLE_TTL } from '../store/refresh.js'

export interface AuthConfig {
  host: string
  port: number
  /** Address of the admin listener (/health/*, /metrics), apart from the public one. */
  adminHost: string
  adminPort: number
  /** Seconds the public listener keeps serving after SIGTERM, readiness already 503. */
  drainDelay: number
  /** `iss` of every token, and the base of the discovery URLs; no trailing slash. */
  issuer: string
  /** Default `aud`. */
  audience: string
  /** Access-token lifetime, seconds. */
  accessTokenTtl: number
  /** CLOCK_SKEW, seconds: how long past `exp` a verifier may still accept a token. */
  clockSkew: number
  /** `Cache-Control: max-age` of the JWKS and discovery documents, seconds (<= pre-publish / 2 and <= VERIFIER_CACHE_MAX). */
  jwksMaxAge: number
  /** How often the signing key and the JWKS are re-read from the store, ms. */
  keyPollInterval: number
  /** The signer stops signing when its view of the keys is older than this, ms (SIGNER_PROPAGATION). */
  keyMaxStaleness: number
  refreshIdleTtl: number
  refreshAbsoluteTtl: number
  /** Largest accepted request body, bytes. */
  bodyLimit: number
  login: { ipMax: number, ipWindow: number, userMax: number, userWindow: number }
  /** Fastify `trustProxy`: false, true, or the proxy addresses/CIDRs to trust. */
  trustProxy: boolean | string[]
  scrypt: ScryptParams
  /** Redis for the login counters, shared by every auth replica; undefined = in-process counters. */
  redisUrl: string | undefined
  /**
   * PostgreSQL: longest one statement may wait for a pooled or new connection and the answer
   * together, ms; past it the request answers 503 temporarily_unavailable.
   */
  databaseTimeout: number
}

export const DEFAULT_AUTH_HOST = '127.0.0.1'
/** Not 3000: Grafana's default port (docs/operations.md, "Default ports"). */
export const DEFAULT_AUTH_PORT = 3010
/** Loopback: health and metrics are for the machine's own probes and scraper unless AUTH_ADMIN_HOST says otherwise. */
export const DEFAULT_AUTH_ADMIN_HOST = '127.0.0.1'
/** Not 9091: the Prometheus Pushgateway's; 9100-9999 is the exporters' range. */
export const DEFAULT_AUTH_ADMIN_PORT = 8091
export const DEFAULT_AUTH_ISSUER = `http://127.0.0.1:${DEFAULT_AUTH_PORT}`
export const DEFAULT_AUTH_AUDIENCE = 'portcullis'
export const DEFAULT_BODY_LIMIT = 4096
export const DEFAULT_KEY_POLL_INTERVAL = 1
export const DEFAULT_LOGIN_IP_MAX = 30
export const DEFAULT_LOGIN_IP_WINDOW = 60
export const DEFAULT_LOGIN_USER_MAX = 5
export const DEFAULT_LOGIN_USER_WINDOW = 300
/** AUTH_DATABASE_TIMEOUT, seconds: a frozen database costs a request about this long, then 503. */
export const DEFAULT_AUTH_DATABASE_TIMEOUT = 2

/** Every variable the auth service reads itself (`--help` and docs/configuration.md list these). */
export const AUTH_ENV: EnvTable = [
  ['AUTH_HOST', DEFAULT_AUTH_HOST, 'public listener address'],
  ['AUTH_PORT', String(DEFAULT_AUTH_PORT), 'public listener port (login, refresh, logout, /oauth/token, JWKS, discovery)'],
  ['AUTH_ADMIN_HOST', DEFAULT_AUTH_ADMIN_HOST, 'admin listener address (/health/live, /health/ready, /metrics), apart from AUTH_HOST: 0.0.0.0 in a container, so that probes and the scraper reach it'],
  ['AUTH_ADMIN_PORT', String(DEFAULT_AUTH_ADMIN_PORT), 'admin listener port; must differ from AUTH_PORT'],
  ['AUTH_DRAIN_DELAY', durationText(DEFAULT_DRAIN_DELAY), 'on SIGTERM, /health/ready answers 503 at once and the public listener keeps serving this long before it stops accepting and finishes in-flight requests (time for load balancers to stop sending); 0: close at once. SIGINT never waits'],
  ['AUTH_ISSUER', 'http://AUTH_HOST:AUTH_PORT', '`iss` claim and base URL of jwks_uri / token_endpoint in discovery'],
  ['AUTH_AUDIENCE', DEFAULT_AUTH_AUDIENCE, 'default `aud` claim (a client can have its own)'],
  ['AUTH_KEY_POLL_INTERVAL', durationText(DEFAULT_KEY_POLL_INTERVAL), 'how often the active key and the JWKS are re-read; must be < SIGNER_PROPAGATION'],
  ['REFRESH_IDLE_TTL', durationText(DEFAULT_REFRESH_IDLE_TTL), 'a refresh token unused for this long is refused'],
  ['REFRESH_ABSOLUTE_TTL', durationText(DEFAULT_REFRESH_ABSOLUTE_TTL), 'a refresh-token family (one login) ends this long after login; >= REFRESH_IDLE_TTL'],
  ['AUTH_BODY_LIMIT', String(DEFAULT_BODY_LIMIT), 'largest request body in bytes; larger is 400 invalid_request'],
  ['AUTH_LOGIN_IP_MAX', String(DEFAULT_LOGIN_IP_MAX), 'login attempts per client IP per AUTH_LOGIN_IP_WINDOW, then 429'],
  ['AUTH_LOGIN_IP_WINDOW', durationText(DEFAULT_LOGIN_IP_WINDOW), 'window of AUTH_LOGIN_IP_MAX'],
  ['AUTH_LOGIN_USER_MAX', String(DEFAULT_LOGIN_USER_MAX), 'login attempts per username (known or not) per AUTH_LOGIN_USER_WINDOW, then 429'],
  ['AUTH_LOGIN_USER_WINDOW', durationText(DEFAULT_LOGIN_USER_WINDOW), 'window of AUTH_LOGIN_USER_MAX'],
  ['AUTH_TRUST_PROXY', 'false', '`true`, or a comma list of proxy addresses/CIDRs whose X-Forwarded-For is believed (client IP for the per-IP limit)'],
  ['REDIS_URL', 'unset', 'redis:// URL: login counters shared by every auth replica (unset: counted in each process), and revocations published there for verifiers that take them from Redis; unreachable at boot stops the boot, later outages answer logins 503 (revocations are published again once it is back)'],
  ['AUTH_DATABASE_TIMEOUT', durationText(DEFAULT_AUTH_DATABASE_TIMEOUT), 'PostgreSQL (DATABASE_URL) only: longest one statement waits for a pooled or new connection and the answer, together; past it the request answers 503 temporarily_unavailable with Retry-After (database stopped, frozen, or every pooled connection busy). At least 100ms'],
  ['PASSWORD_SCRYPT_N', String(DEFAULT_SCRYPT_PARAMS.N), 'scrypt cost for new password hashes (power of two); stored with each hash, old hashes are upgraded at login'],
  ['PASSWORD_SCRYPT_R', String(DEFAULT_SCRYPT_PARAMS.r), 'scrypt block size for new hashes (128 * N * r bytes per hash, at most 1 GiB)'],
  ['PASSWORD_SCRYPT_P', String(DEFAULT_SCRYPT_PARAMS.p), 'scrypt parallelization for new hashes (N=2^15, r=8, p=3 is an OWASP-recommended setting)']
]

/**
 * Everything `portcullis auth` reads: AUTH_ENV, then the key timings (checked as the rotation worker
 * checks them), the store, the key secrets and the log level.
 */
export const AUTH_PROCESS_ENV: ProcessEnv = { own: AUTH_ENV, shared: [KEY_TIMINGS_ENV, STORE_ENV, SECRETS_ENV, LOG_ENV] }

function trustProxyFromEnv (env: Env): boolean | string[] {
  const list = envList(env, 'AUTH_TRUST_PROXY')
  if (list.length === 0) return false
  if (list.length === 1 && /^(true|false)$/i.test(list[0]!)) return list[0]!.toLowerCase() === 'true'
  for (const a of list) {
    if (!/^[0-9a-fA-F.:]+(\/\d{1,3})?$/.test(a)) throw new ConfigError('AUTH_TRUST_PROXY', `"${a}" is not an IP address or CIDR`)
  }
  return list
}

/** `http://AUTH_HOST:AUTH_PORT` (a wildcard address becomes 127.0.0.1): http://127.0.0.1:3010 by default. */
function defaultIssuer (host: string, port: number): string {
  if (port === 0) return DEFAULT_AUTH_ISSUER
  const h = host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host
  return `http://${h.includes(':') ? `[${h}]` : h}:${port}`
}

/**
 * Reads and checks the auth settings; throws ConfigError naming the variable. `timings` come from
 * `keyTimingsFromEnv` (ACCESS_TOKEN_TTL, CLOCK_SKEW, KEY_PREPUBLISH, VERIFIER_CACHE_MAX, SIGNER_PROPAGATION).
 */
export function authConfigFromEnv (env: Env, timings: KeyTimings): AuthConfig {
  const host = envString(env, 'AUTH_HOST', DEFAULT_AUTH_HOST)
  const port = envInt(env, 'AUTH_PORT', DEFAULT_AUTH_PORT, { min: 0, max: 65535 })
  const adminHost = envString(env, 'AUTH_ADMIN_HOST', DEFAULT_AUTH_ADMIN_HOST)
  const adminPort = envInt(env, 'AUTH_ADMIN_PORT', DEFAULT_AUTH_ADMIN_PORT, { min: 0, max: 65535 })
  if (port !== 0 && port === adminPort) throw new ConfigError('AUTH_ADMIN_PORT', `must differ from AUTH_PORT (${port})`)
  const issuerUrl = envUrl(env, 'AUTH_ISSUER', ['http:', 'https:'])
  const issuer = (issuerUrl?.toString() ?? defaultIssuer(host, port)).replace(/\/+$/, '')
  if (issuerUrl !== undefined && (issuerUrl.search !== '' || issuerUrl.hash !== '')) {
    throw new ConfigError('AUTH_ISSUER', 'must not have a query or fragment')
  }
  const audience = envString(env, 'AUTH_AUDIENCE', DEFAULT_AUTH_AUDIENCE)
  if (!/^[\x21-\x7E]{1,256}$/.test(audience)) throw new ConfigError('AUTH_AUDIENCE', 'must be 1-256 printable characters without spaces')

  const keyPollInterval = envDuration(env, 'AUTH_KEY_POLL_INTERVAL', DEFAULT_KEY_POLL_INTERVAL, { min: 0.01 })
  if (keyPollInterval >= timings.signerPropagation) {
    throw new ConfigError('AUTH_KEY_POLL_INTERVAL', `must be shorter than SIGNER_PROPAGATION (${timings.signerPropagation}s): a new active key must be noticed within it`)
  }
  const refreshIdleTtl = envDuration(env, 'REFRESH_IDLE_TTL', DEFAULT_REFRESH_IDLE_TTL, { min: 1 })
  const refreshAbsoluteTtl = envDuration(env, 'REFRESH_ABSOLUTE_TTL', DEFAULT_REFRESH_ABSOLUTE_TTL, { min: 1 })
  if (refreshAbsoluteTtl < refreshIdleTtl) {
    throw new ConfigError('REFRESH_ABSOLUTE_TTL', `must be >= REFRESH_IDLE_TTL (${refreshIdleTtl}s)`)
  }
  const bodyLimit = envInt(env, 'AUTH_BODY_LIMIT', DEFAULT_BODY_LIMIT, { min: 256, max: 1024 * 1024 })
  const login = {
    ipMax: envInt(env, 'AUTH_LOGIN_IP_MAX', DEFAULT_LOGIN_IP_MAX, { min: 1 }),
    ipWindow: envDuration(env, 'AUTH_LOGIN_IP_WINDOW', DEFAULT_LOGIN_IP_WINDOW, { min: 1 }) * 1000,
    userMax: envInt(env, 'AUTH_LOGIN_USER_MAX', DEFAULT_LOGIN_USER_MAX, { min: 1 }),
    userWindow: envDuration(env, 'AUTH_LOGIN_USER_WINDOW', DEFAULT_LOGIN_USER_WINDOW, { min: 1 }) * 1000
  }
  return {
    host,
    port,
    adminHost,
    adminPort,
    drainDelay: envDuration(env, 'AUTH_DRAIN_DELAY', DEFAULT_DRAIN_DELAY, { min: 0 }),
    issuer,
    audience,
    accessTokenTtl: timings.accessTokenTtl,
    clockSkew: timings.clockSkew,
    jwksMaxAge: jwksCacheMaxAge(timings),
    keyPollInterval: Math.round(keyPollInterval * 1000),
    keyMaxStaleness: Math.round(timings.signerPropagation * 1000),
    refreshIdleTtl,
    refreshAbsoluteTtl,
    bodyLimit,
    login,
    trustProxy: trustProxyFromEnv(env),
    scrypt: scryptParamsFromEnv(env),
    redisUrl: envUrl(env, 'REDIS_URL', ['redis:', 'rediss:'])?.href,
    databaseTimeout: Math.round(envDuration(env, 'AUTH_DATABASE_TIMEOUT', DEFAULT_AUTH_DATABASE_TIMEOUT, { min: 0.1 }) * 1000)
  }
}

export interface AuthSettings {
  logLevel: LogLevel
  timings: KeyTimings
  config: AuthConfig
  db: DbOptions & { dataDir: string }
}

/**
 * Every setting `portcullis auth` reads from `env` but the key secrets (loadKeySecrets reads
 * PORTCULLIS_KEY_SECRETS): AUTH_PROCESS_ENV lists what this reads.
 */
export function authSettingsFromEnv (env: Env): AuthSettings {
  const logLevel = logLevelFromEnv(env)
  const timings = keyTimingsFromEnv(env)
  return { logLevel, timings, config: authConfigFromEnv(env, timings), db: dbOptionsFromEnv(env) }
}
