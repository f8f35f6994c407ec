import { readFileSync } from 'node:fs'
import { isIP } from 'node:net'
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

/**
 * Seconds of a duration the schema let through; `at` names the setting in the error. The pattern
 * also matches `0s` and runs of digits too long for a number: zero would switch an upstream
 * timeout off (and a zero rate-limit window fails the boot), an infinite one never ends.
 */
function seconds (d: Duration | undefined, def: number, source: string, at: string): number {
  if (d === undefined) return def
  const s = typeof d === 'number' ? d : parseDuration(d)!
  if (!(s > 0)) throw new ConfigError(source, `${at}: must be a duration greater than zero`)
  if (!Number.isFinite(s * 1000)) throw new ConfigError(source, `${at}: must be a finite duration`)
  return s
}

function rateLimitOf (r: RawRateLimit | undefined, def: number, source: string, at: string): RateLimitSetting | false | undefined {
  if (r === undefined || r === false) return r
  return { max: r.max, timeWindow: seconds(r.timeWindow, def, source, `${at}/timeWindow`) }
}

/** The address ranges proxy-addr (Fastify's `trustProxy`) knows by name. */
const PROXY_RANGES = new Set(['loopback', 'linklocal', 'uniquelocal'])

/** Prefix length of a contiguous IPv4 netmask (255.255.0.0 -> 16), else undefined. */
function netmaskBits (mask: string): number | undefined {
  if (isIP(mask) !== 4) return undefined
  const n = mask.split('.').reduce((acc, o) => acc * 256 + Number(o), 0)
  const bits = n.toString(2).padStart(32, '0')
  return /^1*0*$/.test(bits) ? bits.indexOf('0') === -1 ? 32 : bits.indexOf('0') : undefined
}

/**
 * Why one trusted-proxy entry would make Fastify throw at boot (proxy-addr compiles them then):
 * an address, an address with a prefix length or an IPv4 netmask, or a named range.
 */
function proxyEntryProblem (entry: string): string | undefined {
  if (PROXY_RANGES.has(entry)) return undefined
  const slash = entry.lastIndexOf('/')
  const address = slash === -1 ? entry : entry.slice(0, slash)
  const kind = isIP(address)
  if (kind === 0) return `${JSON.stringify(entry)} is not an IP address, a CIDR range or one of ${[...PROXY_RANGES].join(', ')}`
  if (slash === -1) return undefined
  const range = entry.slice(slash + 1)
  const max = kind === 4 ? 32 : 128
  const bits = /^\d+$/.test(range) ? Number(range) : kind === 4 ? netmaskBits(range) : undefined
  if (bits === undefined || bits < 1 || bits > max) return `${JSON.stringify(entry)}: the prefix length must be 1 to ${max}${kind === 4 ? ' (or a netmask)' : ''}`
  return undefined
}

function checkTrustProxy (tp: RawFile['trustProxy'], source: string): void {
  // Fastify splits a string at commas and trims each part; list entries are taken as they are
  const entries: Array<[string, string]> = typeof tp === 'string'
    ? tp.split(',').map((e) => ['trustProxy', e.trim()])
    : Array.isArray(tp) ? tp.map((e, i) => [`trustProxy/${i}`, e]) : []
  for (const [at, entry] of entries) {
    const problem = proxyEntryProblem(entry)
    if (problem !== undefined) throw new ConfigError(source, `${at}: ${problem}`)
  }
}

/** The rules jwks-auth applies to its issuers at boot, checked here so a bad file names its setting. */
function checkIssuers (issuers: IssuerConfig[], source: string): void {
  const seen = new Set<string>()
  issuers.forEach((iss, i) => {
    const url = (value: string): URL | undefined => {
      try { return new URL(value) } catch { return undefined }
    }
    if (url(iss.issuer) === undefined) throw new ConfigError(source, `issuers/${i}/issuer: not a valid URL`)
    if (seen.has(iss.issuer)) throw new ConfigError(source, `issuers/${i}/issuer: "${iss.issuer}" is listed twice`)
    seen.add(iss.issuer)
    // without jwksUri, the keys are fetched from <issuer>/.well-known/jwks.json
    const at = iss.jwksUri === undefined ? `issuers/${i}/issuer` : `issuers/${i}/jwksUri`
    const jwks = url(iss.jwksUri ?? `${iss.issuer.replace(/\/+$/, '')}/.well-known/jwks.json`)
    if (jwks === undefined) throw new ConfigError(source, `${at}: not a valid URL`)
    if (jwks.pathname.endsWith('/') || jwks.search !== '' || jwks.hash !== '') {
      throw new ConfigError(source, `${at}: the JWKS address must name a document (no trailing slash, query or fragment)`)
    }
    if (iss.revocations !== undefined && iss.revocations !== 'redis' && url(iss.revocations) === undefined) throw new ConfigError(source, `issuers/${i}/revocations: not a valid URL`)
  })
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
    connect: seconds(file.timeouts?.connect, DEFAULT_TIMEOUTS.connect, source, 'timeouts/connect'),
    headers: seconds(file.timeouts?.headers, DEFAULT_TIMEOUTS.headers, source, 'timeouts/headers'),
    body: seconds(file.timeouts?.body, DEFAULT_TIMEOUTS.body, source, 'timeouts/body')
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
      rateLimit: rateLimitOf(r.rateLimit, DEFAULT_RATE_LIMIT.timeWindow, source, `routes/${i}/rateLimit`),
      timeouts: {
        connect: seconds(r.timeouts?.connect, defTimeouts.connect, source, `routes/${i}/timeouts/connect`),
        headers: seconds(r.timeouts?.headers, defTimeouts.headers, source, `routes/${i}/timeouts/headers`),
        body: seconds(r.timeouts?.body, defTimeouts.body, source, `routes/${i}/timeouts/body`)
      }
    }
  })
  const issuers = file.issuers ?? []
  if (issuers.length === 0 && routes.some((r) => r.auth)) {
    throw new ConfigError(source, 'issuers: at least one issuer is needed when a route has auth (the default)')
  }
  checkIssuers(issuers, source)
  checkTrustProxy(file.trustProxy, source)
  const rl = rateLimitOf(file.rateLimit, DEFAULT_RATE_LIMIT.timeWindow, source, 'rateLimit')
  return {
    issuers,
    trustProxy: file.trustProxy ?? false,
    rateLimit: rl === undefined ? { ...DEFAULT_RATE_LIMIT } : rl,
    breaker: {
      failureThreshold: file.breaker?.failureThreshold ?? DEFAULT_BREAKER.failureThreshold,
      resetTimeout: seconds(file.breaker?.resetTimeout, DEFAULT_BREAKER.resetTimeout, source, 'breaker/resetTimeout')
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
