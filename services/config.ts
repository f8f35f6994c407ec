import { durationText, envDuration, envInt, envString, envUrl, LOG_ENV, logLevelFromEnv, type Env, type EnvRow, type EnvTable, type ProcessEnv } from '../lib/env.js'
import { DEFAULT_DRAIN_DELAY } from '../lib/drain.js'
import { ConfigError } from '../lib/errors.js'
import { JWKS_ENV, jwksOptionsFromEnv } from '../lib/jwks-env.js'
import { TRACING_ENV, tracingFromEnv } from '../lib/tracing-env.js'
import type { TracingPluginOptions } from '@portcullis/tracing'

export const SERVICE_KINDS = ['user', 'order', 'product'] as const
export type ServiceKind = typeof SERVICE_KINDS[number]

export const DEFAULT_PORTS: Record<ServiceKind, number> = { user: 3001, order: 3002, product: 3003 }
/** Admin listeners (/health/*, /metrics): 8093-8095, after auth's 8091 and the rotation worker's 8092, outside the exporters' 9100-9999. */
export const DEFAULT_ADMIN_PORTS: Record<ServiceKind, number> = { user: 8093, order: 8094, product: 8095 }
export const DEFAULT_HOST = '127.0.0.1'
export const DEFAULT_ADMIN_HOST = '127.0.0.1'
/** The auth service's default public URL (auth/config.ts DEFAULT_AUTH_ISSUER; a process never imports another). */
export const DEFAULT_ISSUER = 'http://127.0.0.1:3010'
export const DEFAULT_AUDIENCE = 'portcullis'
export const DEFAULT_UPSTREAM_TIMEOUT_S = 5
export const DEFAULT_CATALOG_REFRESH_S = 60

export const SERVICE_PORT_VARS: Record<ServiceKind, string> = { user: 'USER_SERVICE_PORT', order: 'ORDER_SERVICE_PORT', product: 'PRODUCT_SERVICE_PORT' }
export const SERVICE_ADMIN_PORT_VARS: Record<ServiceKind, string> = { user: 'USER_SERVICE_ADMIN_PORT', order: 'ORDER_SERVICE_ADMIN_PORT', product: 'PRODUCT_SERVICE_ADMIN_PORT' }

/** Every variable the example services read themselves (serviceConfigFromEnv); `--help` and docs/configuration.md list these. */
export const SERVICE_ENV: EnvTable = [
  ['SERVICE_HOST', DEFAULT_HOST, 'public listener address of the service'],
  ...SERVICE_KINDS.map((k): EnvRow => [SERVICE_PORT_VARS[k], String(DEFAULT_PORTS[k]), `${k}-service public port`]),
  ['SERVICE_ADMIN_HOST', DEFAULT_ADMIN_HOST, 'admin listener address (/health/live, /health/ready, /metrics), apart from SERVICE_HOST: 0.0.0.0 in a container, so that probes and the scraper reach it'],
  ...SERVICE_KINDS.map((k): EnvRow => [SERVICE_ADMIN_PORT_VARS[k], String(DEFAULT_ADMIN_PORTS[k]), `${k}-service admin port; must differ from ${SERVICE_PORT_VARS[k]}`]),
  ['SERVICE_DRAIN_DELAY', durationText(DEFAULT_DRAIN_DELAY), 'on SIGTERM, /health/ready answers 503 at once and the public listener keeps serving this long before it stops accepting and finishes in-flight requests (time for load balancers to stop sending); 0: close at once. SIGINT never waits'],
  ['USER_SERVICE_URL', 'http://<SERVICE_HOST>:<USER_SERVICE_PORT>', 'where order-service calls user-service'],
  ['PRODUCT_SERVICE_URL', 'http://<SERVICE_HOST>:<PRODUCT_SERVICE_PORT>', 'where order-service calls product-service'],
  ['AUTH_ISSUER', DEFAULT_ISSUER, 'the one trusted token issuer (`iss`)'],
  ['AUTH_AUDIENCE', DEFAULT_AUDIENCE, 'accepted audience(s), comma-separated'],
  ['AUTH_JWKS_URL', '<AUTH_ISSUER>/.well-known/jwks.json', 'the issuer\'s JWKS'],
  ['AUTH_REVOCATIONS_URL', 'unset', 'where the issuer\'s revocations come from: its revocation feed, `<AUTH_ISSUER>/auth/revocations` for Portcullis\' auth service (`portcullis start` sets it), or a redis:// URL, the Redis the auth service publishes them to (its REDIS_URL): revoked sessions, users, tokens and keys are refused within about a second, and the service is ready only once it has the set; unset: tokens are valid until they expire'],
  ['AUTH_TOKEN_URL', '<AUTH_ISSUER>/oauth/token', 'token endpoint for the service\'s own client-credentials token'],
  ['SERVICE_CLIENT_ID', 'unset', 'the service\'s own client (portcullis clients add); needed for calls made outside a request'],
  ['SERVICE_CLIENT_SECRET', 'unset', 'its secret (set together with SERVICE_CLIENT_ID)'],
  ['SERVICE_UPSTREAM_TIMEOUT', durationText(DEFAULT_UPSTREAM_TIMEOUT_S), 'deadline of one call to another service; past it the caller gets a 504'],
  ['ORDER_CATALOG_REFRESH', durationText(DEFAULT_CATALOG_REFRESH_S), 'order-service background catalog refresh period (with its own token), 0 = off']
]

/** Everything `portcullis services <kind>` reads: SERVICE_ENV, then the JWKS verifier settings and the log level. */
export const SERVICE_PROCESS_ENV: ProcessEnv = { own: SERVICE_ENV, shared: [JWKS_ENV, TRACING_ENV, LOG_ENV] }

export interface ServiceConfig {
  kind: ServiceKind
  host: string
  port: number
  /** Address and port of the admin listener (/health/*, /metrics). */
  adminHost: string
  adminPort: number
  /** Seconds the public listener keeps serving after SIGTERM, readiness already 503. */
  drainDelay: number
  issuer: string
  audience: string[]
  jwksUri: string
  /** The issuer's revocation feed (AUTH_REVOCATIONS_URL), or undefined. */
  revocations: string | undefined
  /** Token endpoint for the service's own client-credentials token. */
  tokenUrl: string
  /** Present when the service has its own client (needed only for background calls). */
  client: { id: string, secret: string } | undefined
  /** Milliseconds. */
  upstreamTimeout: number
  userServiceUrl: string
  productServiceUrl: string
  /** Seconds between the order service's background catalog refreshes; 0 disables them. */
  catalogRefresh: number
  /** jwks-auth timings (JWKS_REFRESH_INTERVAL, JWKS_CACHE_TTL, JWKS_KID_MISS_COOLDOWN). */
  jwks: ReturnType<typeof jwksOptionsFromEnv>
  logLevel: string
  /** Trace export (the OpenTelemetry variables, TRACING_ENV); `service.name` defaults to `<kind>-service`. */
  tracing: TracingPluginOptions
}

function url (env: Env, name: string, def: string): string {
  return (envUrl(env, name, ['http:', 'https:'])?.toString() ?? def).replace(/\/$/, '')
}

/** Every env var a service reads, validated at boot (a bad one throws a ConfigError naming it). */
export function serviceConfigFromEnv (kind: ServiceKind, env: Env): ServiceConfig {
  const issuer = url(env, 'AUTH_ISSUER', DEFAULT_ISSUER)
  const audience = envString(env, 'AUTH_AUDIENCE', DEFAULT_AUDIENCE).split(',').map((s) => s.trim()).filter((s) => s !== '')
  const id = envString(env, 'SERVICE_CLIENT_ID')
  const secret = envString(env, 'SERVICE_CLIENT_SECRET')
  if ((id === undefined) !== (secret === undefined)) {
    throw new ConfigError(id === undefined ? 'SERVICE_CLIENT_ID' : 'SERVICE_CLIENT_SECRET', 'SERVICE_CLIENT_ID and SERVICE_CLIENT_SECRET are set together or not at all')
  }
  const port = (k: ServiceKind): number => envInt(env, SERVICE_PORT_VARS[k], DEFAULT_PORTS[k], { min: 0, max: 65535 })
  const host = envString(env, 'SERVICE_HOST', DEFAULT_HOST)
  const local = (k: ServiceKind): string => `http://${host === '0.0.0.0' ? '127.0.0.1' : host}:${port(k)}`
  const adminPort = envInt(env, SERVICE_ADMIN_PORT_VARS[kind], DEFAULT_ADMIN_PORTS[kind], { min: 0, max: 65535 })
  if (adminPort !== 0 && adminPort === port(kind)) throw new ConfigError(SERVICE_ADMIN_PORT_VARS[kind], `must differ from ${SERVICE_PORT_VARS[kind]} (${adminPort})`)
  return {
    kind,
    host,
    port: port(kind),
    adminHost: envString(env, 'SERVICE_ADMIN_HOST', DEFAULT_ADMIN_HOST),
    adminPort,
    drainDelay: envDuration(env, 'SERVICE_DRAIN_DELAY', DEFAULT_DRAIN_DELAY, { min: 0 }),
    issuer,
    audience,
    jwksUri: url(env, 'AUTH_JWKS_URL', `${issuer}/.well-known/jwks.json`),
    revocations: envUrl(env, 'AUTH_REVOCATIONS_URL', ['http:', 'https:', 'redis:', 'rediss:'])?.href,
    tokenUrl: url(env, 'AUTH_TOKEN_URL', `${issuer}/oauth/token`),
    client: id !== undefined && secret !== undefined ? { id, secret } : undefined,
    upstreamTimeout: envDuration(env, 'SERVICE_UPSTREAM_TIMEOUT', DEFAULT_UPSTREAM_TIMEOUT_S, { min: 0.001 }) * 1000,
    userServiceUrl: url(env, 'USER_SERVICE_URL', local('user')),
    productServiceUrl: url(env, 'PRODUCT_SERVICE_URL', local('product')),
    catalogRefresh: envDuration(env, 'ORDER_CATALOG_REFRESH', DEFAULT_CATALOG_REFRESH_S),
    jwks: jwksOptionsFromEnv(env),
    logLevel: logLevelFromEnv(env),
    tracing: tracingFromEnv(env, `${kind}-service`)
  }
}
