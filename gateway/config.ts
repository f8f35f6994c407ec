import { readFileSync } from 'node:fs'
import { extname } from 'node:path'
import AjvModule, { type ErrorObject } from 'ajv'
import { parse as parseYaml } from 'yaml'
import type { IssuerOptions } from '@portcullis/jwks-auth'
import { ConfigError } from '../lib/errors.js'
import { parseDuration } from '../lib/env.js'
import { DURATION_PATTERN, ROUTE_FILE_SCHEMA } from './route-schema.js'

// ajv is CommonJS with `exports.default`: under NodeNext the default import is the module object.
const Ajv = AjvModule.default

export const DEFAULT_TIMEOUTS = { connect: 2, headers: 10, body: 30 } // seconds
export const DEFAULT_BREAKER = { failureThreshold: 5, resetTimeout: 10 }
export const DEFAULT_RATE_LIMIT = { max: 100, timeWindow: 60 }

export interface Timeouts { connect: number, headers: number, body: number } // seconds
export interface RateLimitSetting { max: number, timeWindow: number } // timeWindow in seconds

/** An issuers[] entry of the route file: jwks-auth's own issuer options (one definition). */
export type IssuerConfig = IssuerOptions

export interface RouteConfig {
  /** Label used in metrics and logs: the `name` from the file, else the prefix. */
  name: string
  prefix: string
  upstream: string
  rewritePrefix?: string
  methods?: string[]
  auth: boolean
  roles: string[]
  permissions: string[]
  scopes: string[]
  /** `false`: this route is not rate limited; `undefined`: the global default budget applies. */
  rateLimit: RateLimitSetting | false | undefined
  timeouts: Timeouts
}

export interface GatewayConfig {
  issuers: IssuerConfig[]
  trustProxy: boolean | number | string | string[]
  rateLimit: RateLimitSetting | false
  breaker: { failureThreshold: number, resetTimeout: number }
  routes: RouteConfig[]
}

type Duration = number | string
interface RawTimeouts { connect?: Duration, headers?: Duration, body?: Duration }
type RawRateLimit = false | { max: number, timeWindow?: Duration }
interface RawRoute {
  name?: string
  prefix: string
  upstream: string
  rewritePrefix?: string
  methods?: string[]
  auth?: boolean
  roles?: string[]
  permissions?: string[]
  scopes?: string[]
  rateLimit?: RawRateLimit
  timeouts?: RawTimeouts
}
interface RawFile {
  issuers?: IssuerConfig[]
  trustProxy?: boolean | number | string | string[]
  rateLimit?: RawRateLimit
  timeouts?: RawTimeouts
  breaker?: { failureThreshold?: number, resetTimeout?: Duration }
  routes: RawRoute[]
}

const ajv = new Ajv({ allErrors: false, strict: true, allowUnionTypes: true })
const validate = ajv.compile<RawFile>(ROUTE_FILE_SCHEMA)

function seconds (d: Duration | undefined, def: number): number {
  if (d === undefined) return def
  return typeof d === 'number' ? d : parseDuration(d)!
}

function rateLimitOf (r: RawRateLimit | undefined, def: number): RateLimitSetting | false | undefined {
  if (r === undefined || r === false) return r
  return { max: r.max, timeWindow: seconds(r.timeWindow, def) }
}

/**
 * One line for the most telling schema error. Ajv reports every failed branch of an `anyOf`
 * ("must be equal to constant" for `rateLimit: false` when the object branch was meant): the deepest
 * error wins, then one from inside a branch over the branch mismatch itself; durations, `rateLimit`
 * and enums get a message that says what is allowed.
 */
function describeSchemaError (errors: readonly ErrorObject[]): string {
  const depth = Math.max(...errors.map((e) => e.instancePath.length))
  const deepest = errors.filter((e) => e.instancePath.length === depth)
  const path = deepest[0]!.instancePath
  const where = path === '' ? '(top level)' : path.slice(1)
  if (deepest.some((e) => e.keyword === 'pattern' && (e.params as { pattern: string }).pattern === DURATION_PATTERN)) {
    return `${where}: must be a duration: a positive number of seconds, or a string with a unit (250ms, 5s, 1m, 1h, 1d)`
  }
  if (deepest.some((e) => e.keyword === 'const') && deepest.some((e) => e.keyword === 'type' && (e.params as { type: string }).type === 'object')) {
    return `${where}: must be false (no limit) or an object { max, timeWindow }`
  }
  const e = deepest.find((x) => !['const', 'anyOf', 'type'].includes(x.keyword)) ?? deepest.find((x) => x.keyword !== 'anyOf') ?? deepest[0]!
  let extra = ''
  if (e.keyword === 'additionalProperties') extra = ` "${(e.params as { additionalProperty: string }).additionalProperty}"`
  if (e.keyword === 'enum') extra = ` (${(e.params as { allowedValues: unknown[] }).allowedValues.join(', ')})`
  return `${where}: ${e.message ?? 'is invalid'}${extra}`
}

/**
 * Validates a parsed route file and fills in defaults. Throws a ConfigError naming `source`
 * (the file path) and the first problem, e.g. `routes/0/upstream: must match pattern "^https?://"`.
 */
export function parseGatewayConfig (data: unknown, source: string): GatewayConfig {
  if (!validate(data)) throw new ConfigError(source, describeSchemaError(validate.errors!))
  const file = data
  const defTimeouts: Timeouts = {
    connect: seconds(file.timeouts?.connect, DEFAULT_TIMEOUTS.connect),
    headers: seconds(file.timeouts?.headers, DEFAULT_TIMEOUTS.headers),
    body: seconds(file.timeouts?.body, DEFAULT_TIMEOUTS.body)
  }
  const seen = new Set<string>()
  const routes = file.routes.map((r, i): RouteConfig => {
    if (r.prefix.split('/').some((seg) => seg === '.' || seg === '..')) {
      throw new ConfigError(source, `routes/${i}/prefix: dot segments are not allowed`)
    }
    if (seen.has(r.prefix)) throw new ConfigError(source, `routes/${i}/prefix: "${r.prefix}" is listed twice`)
    seen.add(r.prefix)
    try {
      new URL(r.upstream)
    } catch {
      throw new ConfigError(source, `routes/${i}/upstream: not a valid URL`)
    }
    return {
      name: r.name ?? r.prefix,
      prefix: r.prefix,
      upstream: r.upstream,
      rewritePrefix: r.rewritePrefix,
      methods: r.methods,
      auth: r.auth ?? true,
      roles: r.roles ?? [],
      permissions: r.permissions ?? [],
      scopes: r.scopes ?? [],
      rateLimit: rateLimitOf(r.rateLimit, DEFAULT_RATE_LIMIT.timeWindow),
      timeouts: {
        connect: seconds(r.timeouts?.connect, defTimeouts.connect),
        headers: seconds(r.timeouts?.headers, defTimeouts.headers),
        body: seconds(r.timeouts?.body, defTimeouts.body)
      }
    }
  })
  const issuers = file.issuers ?? []
  if (issuers.length === 0 && routes.some((r) => r.auth)) {
    throw new ConfigError(source, 'issuers: at least one issuer is needed when a route has auth (the default)')
  }
  const rl = rateLimitOf(file.rateLimit, DEFAULT_RATE_LIMIT.timeWindow)
  return {
    issuers,
    trustProxy: file.trustProxy ?? false,
    rateLimit: rl === undefined ? { ...DEFAULT_RATE_LIMIT } : rl,
    breaker: {
      failureThreshold: file.breaker?.failureThreshold ?? DEFAULT_BREAKER.failureThreshold,
      resetTimeout: seconds(file.breaker?.resetTimeout, DEFAULT_BREAKER.resetTimeout)
    },
    routes
  }
}

/** Reads a YAML (`.yaml`/`.yml`) or JSON route file and validates it; a bad file stops the boot. */
export function loadGatewayConfig (path: string): GatewayConfig {
  let text: string
  try {
    text = readFileSync(path, 'utf8')
  } catch (err) {
    throw new ConfigError(path, `cannot read the route file (${(err as NodeJS.ErrnoException).code ?? 'error'})`)
  }
  let data: unknown
  try {
    data = extname(path) === '.json' ? JSON.parse(text) : parseYaml(text)
  } catch (err) {
    throw new ConfigError(path, `not valid ${extname(path) === '.json' ? 'JSON' : 'YAML'}: ${(err as Error).message.split('\n')[0]}`)
  }
  return parseGatewayConfig(data, path)
}
