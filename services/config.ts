import { envDuration, envEnum, envInt, envString, envUrl, type Env } from '../lib/env.js'
import { ConfigError } from '../lib/errors.js'
import { JWKS_ENV, jwksOptionsFromEnv } from '../lib/jwks-env.js'

export const SERVICE_KINDS = ['user', 'order', 'product'] as const
export type ServiceKind = typeof SERVICE_KINDS[number]

export const DEFAULT_PORTS: Record<ServiceKind, number> = { user: 3001, order: 3002, product: 3003 }
export const DEFAULT_HOST = '127.0.0.1'
export const DEFAULT_ISSUER = 'http://127.0.0.1:3000'
export const DEFAULT_AUDIENCE = 'portcullis'
export const DEFAULT_UPSTREAM_TIMEOUT_S = 5
export const DEFAULT_CATALOG_REFRESH_S = 60

export const SERVICE_PORT_VARS: Record<ServiceKind, string> = { user: 'USER_SERVICE_PORT', order: 'ORDER_SERVICE_PORT', product: 'PRODUCT_SERVICE_PORT' }

export interface ServiceConfig {
  kind: ServiceKind
  host: string
  port: number
  issuer: string
  audience: string[]
  jwksUri: string
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
  return {
    kind,
    host,
    port: port(kind),
    issuer,
    audience,
    jwksUri: url(env, 'AUTH_JWKS_URL', `${issuer}/.well-known/jwks.json`),
    tokenUrl: url(env, 'AUTH_TOKEN_URL', `${issuer}/oauth/token`),
    client: id !== undefined && secret !== undefined ? { id, secret } : undefined,
    upstreamTimeout: envDuration(env, 'SERVICE_UPSTREAM_TIMEOUT', DEFAULT_UPSTREAM_TIMEOUT_S, { min: 0.001 }) * 1000,
    userServiceUrl: url(env, 'USER_SERVICE_URL', local('user')),
    productServiceUrl: url(env, 'PRODUCT_SERVICE_URL', local('product')),
    catalogRefresh: envDuration(env, 'ORDER_CATALOG_REFRESH', DEFAULT_CATALOG_REFRESH_S),
    jwks: jwksOptionsFromEnv(env),
    logLevel: envEnum(env, 'LOG_LEVEL', ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], 'info')
  }
}

export const SERVICE_ENV_HELP = `Environment:
  SERVICE_HOST               listen address (default ${DEFAULT_HOST})
  USER_SERVICE_PORT          user-service port (default 3001)
  ORDER_SERVICE_PORT         order-service port (default 3002)
  PRODUCT_SERVICE_PORT       product-service port (default 3003)
  USER_SERVICE_URL           where order-service finds user-service (default http://<host>:<USER_SERVICE_PORT>)
  PRODUCT_SERVICE_URL        where order-service finds product-service (default http://<host>:<PRODUCT_SERVICE_PORT>)
  AUTH_ISSUER                trusted token issuer (default ${DEFAULT_ISSUER})
  AUTH_AUDIENCE              accepted audience(s), comma-separated (default ${DEFAULT_AUDIENCE})
  AUTH_JWKS_URL              issuer's JWKS (default <AUTH_ISSUER>/.well-known/jwks.json)
  AUTH_TOKEN_URL             token endpoint for the service's own token (default <AUTH_ISSUER>/oauth/token)
  SERVICE_CLIENT_ID          the service's client id (optional; needed for background calls)
  SERVICE_CLIENT_SECRET      its secret (set together with SERVICE_CLIENT_ID)
  SERVICE_UPSTREAM_TIMEOUT   deadline of one call to another service (default 5s)
  ORDER_CATALOG_REFRESH      order-service background catalog refresh period, 0 = off (default 60s)
${JWKS_ENV.map(([n, d, m]) => `  ${n.padEnd(26)} ${m} (default ${d})`).join('\n')}
  LOG_LEVEL                  pino log level (default info)`
