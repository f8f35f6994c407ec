import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import fc from 'fast-check'
import proxyAddr from '@fastify/proxy-addr'
import t from 'tap'
import { stringify as toYaml } from 'yaml'
import { buildGateway } from '../gateway/server.js'
import { loadGatewayConfig, parseGatewayConfig, type GatewayConfig, type RouteConfig } from '../gateway/config.js'
import { SUPPORTED_ALGORITHMS } from '@portcullis/jwks-auth'
import { resolveOptions } from '../plugins/jwks-auth/src/options.js'
import { isConfigError } from '../lib/errors.js'
import { holds, runs } from './helpers/properties.js'

// Property-based checks of the route-file loader (gateway/config.ts, gateway/route-schema.ts):
// whatever the file holds, the loader returns a config the gateway can run, or throws one
// ConfigError naming the file and the setting; never a TypeError, never a hang. A short run here;
// PROPERTY_RUNS raises the cases per property (drills/09-properties.drill.ts runs 100,000).

/** One call of the loader taking longer than this counts as a hang. */
const HANG_MS = 2000
const dir = mkdtempSync(join(tmpdir(), 'portcullis-prop-routes-'))
t.teardown(() => rmSync(dir, { recursive: true, force: true }))
const YAML_FILE = join(dir, 'routes.yaml')
const JSON_FILE = join(dir, 'routes.json')

// ---- generators of valid route files ----

const METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'] as const
const segment = fc.stringMatching(/^[A-Za-z0-9._~-]{1,6}$/).filter((s) => s !== '.' && s !== '..')
const prefix = fc.array(segment, { maxLength: 3 }).map((s) => `/${s.join('/')}`)
const host = fc.constantFrom('127.0.0.1', 'localhost', 'example.com', '[::1]', 'svc-1.internal')
const httpUrl = fc.tuple(fc.constantFrom('http', 'https'), host, fc.option(fc.integer({ min: 1, max: 65535 }), { nil: undefined }), fc.option(prefix, { nil: undefined }))
  .map(([scheme, h, port, path]) => `${scheme}://${h}${port === undefined ? '' : `:${port}`}${path ?? ''}`)
/** A duration as the file may write it: a positive number of seconds, or digits with a unit. */
const duration = fc.oneof(
  fc.integer({ min: 1, max: 100_000 }),
  fc.double({ min: 0.001, max: 1e6, noNaN: true }),
  fc.tuple(fc.integer({ min: 1, max: 100_000 }), fc.option(fc.stringMatching(/^\d{1,3}$/), { nil: undefined }), fc.constantFrom('', 'ms', 's', 'm', 'h', 'd'))
    .map(([n, frac, unit]) => `${n}${frac === undefined ? '' : `.${frac}`}${unit}`)
)
const strings = fc.uniqueArray(fc.string({ minLength: 1, maxLength: 8 }), { maxLength: 3 })
const rateLimit = fc.oneof(fc.constant(false as const), fc.record({ max: fc.integer({ min: 1, max: 1_000_000 }), timeWindow: duration }, { requiredKeys: ['max'] }))
const timeouts = fc.record({ connect: duration, headers: duration, body: duration }, { requiredKeys: [] })
const route = fc.record({
  name: fc.stringMatching(/^[A-Za-z0-9_.-]{1,12}$/),
  prefix,
  upstream: httpUrl,
  rewritePrefix: fc.string({ maxLength: 8 }).map((s) => `/${s}`),
  methods: fc.subarray([...METHODS], { minLength: 1 }),
  auth: fc.boolean(),
  roles: strings,
  permissions: strings,
  scopes: strings,
  rateLimit,
  timeouts
}, { requiredKeys: ['prefix', 'upstream'] })
const issuer = fc.record({
  issuer: httpUrl,
  jwksUri: httpUrl.map((u) => `${u}/jwks.json`),
  audience: fc.oneof(fc.string({ minLength: 1, maxLength: 8 }), fc.uniqueArray(fc.string({ minLength: 1, maxLength: 8 }), { minLength: 1, maxLength: 3 })),
  algorithms: fc.subarray([...SUPPORTED_ALGORITHMS], { minLength: 1 })
}, { requiredKeys: ['issuer', 'audience'] })
const ipEntry = fc.oneof(fc.ipV4(), fc.ipV6(), fc.constantFrom('loopback', 'linklocal', 'uniquelocal'),
  fc.tuple(fc.ipV4(), fc.integer({ min: 1, max: 32 })).map(([a, n]) => `${a}/${n}`))
/** A valid route file (as parsed JSON/YAML). */
const validFile = fc.record({
  issuers: fc.uniqueArray(issuer, { minLength: 1, maxLength: 2, selector: (i) => i.issuer }),
  trustProxy: fc.oneof(fc.boolean(), fc.integer({ min: 1, max: 10 }), ipEntry, fc.uniqueArray(ipEntry, { minLength: 1, maxLength: 3 })),
  rateLimit,
  timeouts,
  breaker: fc.record({ failureThreshold: fc.integer({ min: 1, max: 100 }), resetTimeout: duration }, { requiredKeys: [] }),
  routes: fc.uniqueArray(route, { minLength: 1, maxLength: 4, selector: (r) => r.prefix })
}, { requiredKeys: ['issuers', 'routes'] })
type ValidFile = typeof validFile extends fc.Arbitrary<infer T> ? T : never

// ---- what a loaded config must be ----

const PREFIX = /^\/([A-Za-z0-9._~-]+(\/[A-Za-z0-9._~-]+)*)?$/
const positive = (s: unknown): boolean => typeof s === 'number' && Number.isFinite(s) && s > 0
const budget = (r: unknown): boolean => r === false || (typeof r === 'object' && r !== null &&
  Number.isInteger((r as { max: unknown }).max) && (r as { max: number }).max >= 1 && positive((r as { timeWindow: unknown }).timeWindow))

/** Why `c` is not a config the gateway can run; undefined when it is. */
function problemOf (c: GatewayConfig): string | undefined {
  if (c.routes.length === 0) return 'no routes'
  const seen = new Set<string>()
  for (const r of c.routes) {
    if (!PREFIX.test(r.prefix) || r.prefix.split('/').some((s) => s === '.' || s === '..')) return `prefix ${r.prefix}`
    if (seen.has(r.prefix)) return `prefix ${r.prefix} twice`
    seen.add(r.prefix)
    let u: URL
    try { u = new URL(r.upstream) } catch { return `upstream ${r.upstream}` }
    if (u.protocol !== 'http:' && u.protocol !== 'https:') return `upstream ${r.upstream}`
    if (typeof r.name !== 'string' || r.name === '' || typeof r.auth !== 'boolean') return `name/auth of ${r.prefix}`
    if (![r.roles, r.permissions, r.scopes].every((a) => Array.isArray(a) && a.every((x) => typeof x === 'string'))) return `rules of ${r.prefix}`
    if (r.rateLimit !== undefined && !budget(r.rateLimit)) return `rateLimit of ${r.prefix}: ${JSON.stringify(r.rateLimit)}`
    if (![r.timeouts.connect, r.timeouts.headers, r.timeouts.body].every(positive)) return `timeouts of ${r.prefix}: ${JSON.stringify(r.timeouts)}`
  }
  if (!budget(c.rateLimit)) return `rateLimit ${JSON.stringify(c.rateLimit)}`
  if (!Number.isInteger(c.breaker.failureThreshold) || c.breaker.failureThreshold < 1 || !positive(c.breaker.resetTimeout)) return `breaker ${JSON.stringify(c.breaker)}`
  if (c.routes.some((r) => r.auth) && c.issuers.length === 0) return 'auth without issuers'
  if (c.issuers.length > 0) {
    // the gateway hands the issuers to jwks-auth as they are: its own validation must accept them
    try { resolveOptions({ issuers: c.issuers }) } catch (err) { return (err as Error).message }
  }
  const tp = c.trustProxy
  if (typeof tp === 'string' || Array.isArray(tp)) {
    // what Fastify does with it when the gateway's app is created (fastify/lib/request.js): a string
    // is split at commas and trimmed, a list compiled as it is (Fastify() itself costs ~3 ms)
    try { proxyAddr.compile(typeof tp === 'string' ? tp.split(',').map((e) => e.trim()) : tp) } catch (err) { return `trustProxy ${JSON.stringify(tp)}: ${(err as Error).message}` }
  } else if (tp !== true && tp !== false && !(Number.isInteger(tp) && tp >= 1)) {
    return `trustProxy ${JSON.stringify(tp)}`
  }
  return undefined
}

const ERROR_LINE = /^Invalid configuration: (?<source>[^:]+): (?<setting>\(top level\)|[A-Za-z0-9_~/]+): (?<detail>.+)$/s

/** The setting a loader error names, when the error is the one clear ConfigError; else a description of what is wrong with it. */
function settingOf (err: unknown, source: string): { setting: string, detail: string } | string {
  if (!isConfigError(err)) return `not a ConfigError: ${err instanceof Error ? `${err.name}: ${err.message}` : String(err)}`
  // a file that cannot be read or parsed: the file is the setting
  if (err.message.startsWith(`Invalid configuration: ${source}: `) && /^(not valid (YAML|JSON): .|cannot read the route file \()/.test(err.message.slice(`Invalid configuration: ${source}: `.length))) {
    return { setting: '(file)', detail: err.message.slice(`Invalid configuration: ${source}: `.length) }
  }
  const m = ERROR_LINE.exec(err.message)
  if (m === null || m.groups!.source !== source) return `unclear message: ${err.message}`
  if (/undefined|\[object |NaN/.test(m.groups!.detail!)) return `unclear detail: ${err.message}`
  return { setting: m.groups!.setting!, detail: m.groups!.detail! }
}

/** Runs the loader: a runnable config, a clear error, or what is wrong (an unusable config, an unclear error, a hang). */
function verdict (load: () => GatewayConfig, source: string): { config?: GatewayConfig, error?: { setting: string, detail: string }, wrong?: string } {
  const start = performance.now()
  let out: { config?: GatewayConfig, error?: { setting: string, detail: string }, wrong?: string }
  try {
    const config = load()
    const problem = problemOf(config)
    out = problem === undefined ? { config } : { wrong: `accepted an unusable config: ${problem}` }
  } catch (err) {
    const s = settingOf(err, source)
    out = typeof s === 'string' ? { wrong: s } : { error: s }
  }
  const ms = performance.now() - start
  return ms > HANG_MS ? { wrong: `the loader took ${Math.round(ms)} ms` } : out
}

// ---- arbitrary documents ----

/** Values a mutation writes into a file: arbitrary JSON and the edge cases of each setting's type. */
const edgeValue = fc.oneof(
  { weight: 3, arbitrary: fc.jsonValue({ maxDepth: 2 }) },
  { weight: 3, arbitrary: fc.constantFrom<unknown>(0, -1, 1, 1.5, 1e308, 5e-324, -0, 2 ** 53, '', ' ', '0', '0s', '0ms', '0.000d', '00', '9'.repeat(400), '1e3', '-1s', ' 5s', '5 s', '5S', '1.s',
    'x', '/', '/..', '/a/../b', '/a//b', 'http://', 'https://', 'http://[', 'http:// x', 'http://x?y#z', 'ftp://x', 'loopback', '10.0.0.0/0', '10.0.0.0/33', '::1/129', '1.2.3', 'a,b', '10.0.0.1, ::1',
    'GET', 'get', 'RS256', 'HS256', 'none', '__proto__', 'constructor', true, false, null, [], {}, [''], ['a', 'a'], { max: 0 }, { max: 1, timeWindow: '0s' }, { max: 1, extra: 1 }) },
  { weight: 1, arbitrary: fc.string({ maxLength: 20 }) },
  { weight: 1, arbitrary: fc.stringMatching(/^\d{1,4}(\.\d{0,3})?(ms|s|m|h|d)?$/) }
)

type Path = Array<string | number>
/** Every path to a value inside `doc` (objects' keys and arrays' indexes), the root first. */
function paths (doc: unknown, at: Path = []): Path[] {
  const out: Path[] = [at]
  if (Array.isArray(doc)) doc.forEach((v, i) => out.push(...paths(v, [...at, i])))
  else if (doc !== null && typeof doc === 'object') for (const [k, v] of Object.entries(doc)) out.push(...paths(v, [...at, k]))
  return out
}

type Mutation = { kind: 'set', value: unknown } | { kind: 'delete' } | { kind: 'add', key: string, value: unknown } | { kind: 'duplicate' }
const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  { weight: 5, arbitrary: edgeValue.map((value) => ({ kind: 'set' as const, value })) },
  { weight: 2, arbitrary: fc.constant({ kind: 'delete' as const }) },
  { weight: 1, arbitrary: fc.tuple(fc.oneof(fc.string({ maxLength: 8 }), fc.constantFrom('__proto__', 'constructor', 'prefix', 'oops')), edgeValue).map(([key, value]) => ({ kind: 'add' as const, key, value })) },
  { weight: 1, arbitrary: fc.constant({ kind: 'duplicate' as const }) }
)

/** `doc` with `m` applied at `path` (a deep copy; the root itself for an empty path). Returns the path the change is at. */
function mutate (doc: unknown, path: Path, m: Mutation): { doc: unknown, at: Path } {
  const copy = JSON.parse(JSON.stringify(doc)) as Record<string | number, unknown> // JSON: a generated file holds only JSON values
  if (path.length === 0) return { doc: m.kind === 'set' ? m.value : copy, at: [] }
  const parent = path.slice(0, -1).reduce<Record<string | number, unknown>>((o, k) => o[k] as Record<string | number, unknown>, copy)
  const key = path.at(-1)!
  if (m.kind === 'set') parent[key] = m.value
  else if (m.kind === 'delete') {
    if (Array.isArray(parent)) parent.splice(key as number, 1)
    else delete parent[key]
  } else if (m.kind === 'add') {
    const target = parent[key]
    if (target !== null && typeof target === 'object' && !Array.isArray(target)) {
      Object.defineProperty(target, m.key, { value: m.value, enumerable: true, writable: true, configurable: true })
      return { doc: copy, at: [...path, m.key] }
    }
    parent[key] = m.value
  } else if (Array.isArray(parent)) {
    parent.push(JSON.parse(JSON.stringify(parent[key as number])))
    return { doc: copy, at: [...path.slice(0, -1), parent.length - 1] }
  }
  return { doc: copy, at: path }
}

/** A rendering of `p` like the loader's messages (`routes/0/prefix`). */
const pathText = (p: Path): string => p.length === 0 ? '(top level)' : p.join('/')
/** True when the setting an error names is where a change at `at` could have made the file wrong. */
function related (setting: string, detail: string, at: Path): boolean {
  const changed = pathText(at)
  if (setting === '(top level)' || setting === '(file)' || changed === '(top level)') return true
  if (changed === setting || changed.startsWith(`${setting}/`) || setting.startsWith(`${changed}/`)) return true
  // a route that now needs an issuer (auth defaults to true), or a prefix now equal to another route's
  if (setting === 'issuers' && /at least one issuer/.test(detail)) return at[0] === 'routes' || at[0] === 'issuers'
  if (/^routes\/\d+\/prefix$/.test(setting) && /listed twice/.test(detail)) return at[0] === 'routes'
  return false
}

t.test('route files with one change anywhere: a runnable config, or one ConfigError naming the changed setting', async (t) => {
  await holds(t, fc.property(validFile, fc.nat(), mutation, (file, pick, m) => {
    const all = paths(file)
    const { doc, at } = mutate(file, all[pick % all.length]!, m)
    const v = verdict(() => parseGatewayConfig(doc, 'routes.yaml'), 'routes.yaml')
    if (v.wrong !== undefined) throw new Error(v.wrong)
    if (v.error !== undefined && !related(v.error.setting, v.error.detail, at)) {
      throw new Error(`the error names ${v.error.setting} (${v.error.detail}) for a change at ${pathText(at)}`)
    }
  }), runs())
})

t.test('arbitrary JSON values as the whole file or as any setting: a runnable config or a clear ConfigError, never a TypeError', async (t) => {
  const anything = fc.oneof(fc.jsonValue({ maxDepth: 4 }), fc.anything({ maxDepth: 3, withNullPrototype: true, withBigInt: true, withDate: true, withMap: true, withSet: true, withSparseArray: true, withTypedArray: true }))
  const shaped = fc.record({ issuers: anything, trustProxy: anything, rateLimit: anything, timeouts: anything, breaker: anything, routes: fc.oneof(anything, fc.array(fc.dictionary(fc.constantFrom('prefix', 'upstream', 'name', 'auth', 'methods', 'roles', 'rateLimit', 'timeouts', 'rewritePrefix', 'x'), anything), { maxLength: 3 })) }, { requiredKeys: [] })
  await holds(t, fc.property(fc.oneof(anything, shaped), (doc) => {
    const v = verdict(() => parseGatewayConfig(doc, 'inline'), 'inline')
    if (v.wrong !== undefined) throw new Error(v.wrong)
  }), runs())
})

/** Text that looks like YAML: indentation, flow collections, anchors, aliases, tags, quotes, directives. */
const yamlish = fc.array(fc.oneof(
  fc.constantFrom('routes:', 'issuers:', '  - ', '- ', 'prefix: ', 'upstream: ', 'http://127.0.0.1:1', '/api', '\n', '\n  ', '\n    ', ': ', '[', ']', '{', '}', ',', '&a ', '*a', '<<: *a', '!!str ', '!!binary ', '!!set', '!!omap', '!!timestamp 2001-12-14',
    '? ', '|', '>-', '"', "'", '#', '%YAML 1.1\n---\n', '---\n', '...\n', '~', 'null', 'true', 'no', '0x1F', '0o17', '.inf', '-.inf', '.nan', '1e999', '__proto__: ', '\t', '\\u0000', 'timeouts: ', 'headers: 5s', 'auth: false'),
  fc.string({ maxLength: 6 })
), { maxLength: 30 }).map((parts) => parts.join(''))

t.test('arbitrary YAML and JSON text in the route file: a runnable config or a clear ConfigError naming the file, never a TypeError or a hang', async (t) => {
  const text = fc.oneof(
    yamlish,
    fc.string({ maxLength: 200 }),
    fc.tuple(validFile, fc.nat(), mutation).map(([f, pick, m]) => { const all = paths(f); return toYaml(mutate(f, all[pick % all.length]!, m).doc) }),
    fc.tuple(validFile, fc.nat(), fc.nat()).map(([f, a, b]) => { const s = JSON.stringify(f); return s.slice(0, a % (s.length + 1)) + s.slice(b % (s.length + 1)) })
  )
  await holds(t, fc.property(text, fc.boolean(), (body, json) => {
    const file = json ? JSON_FILE : YAML_FILE
    writeFileSync(file, body)
    const v = verdict(() => loadGatewayConfig(file), file)
    if (v.wrong !== undefined) throw new Error(v.wrong)
  }), runs(0.2, 50)) // file I/O and the YAML parser (~0.8 ms a case): a fifth of the cases in the long run
})

t.test('a YAML alias bomb is refused quickly with a clear error', async (t) => {
  const bomb = ['a: &a ["x","x","x","x","x","x","x","x","x","x"]', ...Array.from({ length: 9 }, (_, i) => `${String.fromCharCode(98 + i)}: &${String.fromCharCode(98 + i)} [${Array(10).fill(`*${String.fromCharCode(97 + i)}`).join(',')}]`), 'routes: *j'].join('\n')
  writeFileSync(YAML_FILE, bomb)
  const start = performance.now()
  t.throws(() => loadGatewayConfig(YAML_FILE), /Invalid configuration: .*routes\.yaml: /)
  t.ok(performance.now() - start < HANG_MS, 'within the hang limit')
})

// ---- valid files ----

/** What `file` must load as: the defaults and units of docs/configuration.md, computed independently of the loader. */
function expected (file: ValidFile): GatewayConfig {
  const unit: Record<string, number> = { '': 1, ms: 0.001, s: 1, m: 60, h: 3600, d: 86400 }
  const secs = (d: number | string | undefined, def: number): number => {
    if (d === undefined) return def
    if (typeof d === 'number') return d
    const m = /^([\d.]+)([a-z]*)$/.exec(d)!
    return Number(m[1]) * unit[m[2]!]!
  }
  const budgetOf = (r: ValidFile['rateLimit']): RouteConfig['rateLimit'] => r === undefined || r === false ? r : { max: r.max, timeWindow: secs(r.timeWindow, 60) }
  const top = { connect: secs(file.timeouts?.connect, 2), headers: secs(file.timeouts?.headers, 10), body: secs(file.timeouts?.body, 30) }
  return {
    issuers: file.issuers,
    trustProxy: file.trustProxy ?? false,
    rateLimit: budgetOf(file.rateLimit) ?? { max: 100, timeWindow: 60 },
    breaker: { failureThreshold: file.breaker?.failureThreshold ?? 5, resetTimeout: secs(file.breaker?.resetTimeout, 10) },
    routes: file.routes.map((r) => ({
      name: r.name ?? r.prefix,
      prefix: r.prefix,
      upstream: r.upstream,
      rewritePrefix: r.rewritePrefix,
      methods: r.methods,
      auth: r.auth ?? true,
      roles: r.roles ?? [],
      permissions: r.permissions ?? [],
      scopes: r.scopes ?? [],
      rateLimit: budgetOf(r.rateLimit),
      timeouts: { connect: secs(r.timeouts?.connect, top.connect), headers: secs(r.timeouts?.headers, top.headers), body: secs(r.timeouts?.body, top.body) }
    }))
  }
}

/** A config written back as a route file (durations in seconds, every default spelled out). */
function render (c: GatewayConfig): unknown {
  const route = (r: RouteConfig): Record<string, unknown> => {
    // a name equal to the prefix is the default (a name never holds a slash, a prefix always does)
    const out: Record<string, unknown> = { ...(r.name === r.prefix ? {} : { name: r.name }), prefix: r.prefix, upstream: r.upstream, auth: r.auth, roles: r.roles, permissions: r.permissions, scopes: r.scopes, timeouts: r.timeouts }
    if (r.rewritePrefix !== undefined) out.rewritePrefix = r.rewritePrefix
    if (r.methods !== undefined) out.methods = r.methods
    if (r.rateLimit !== undefined) out.rateLimit = r.rateLimit
    return out
  }
  return { issuers: c.issuers, trustProxy: c.trustProxy, rateLimit: c.rateLimit, breaker: c.breaker, routes: c.routes.map(route) }
}

const close = (a: number, b: number): boolean => a === b || Math.abs(a - b) <= 1e-9 * Math.max(Math.abs(a), Math.abs(b))
/** Deep equality, numbers compared to 1e-9 relative (unit conversions may differ in the last bit). */
function same (a: unknown, b: unknown): boolean {
  if (typeof a === 'number' && typeof b === 'number') return close(a, b)
  if (Array.isArray(a) && Array.isArray(b)) return a.length === b.length && a.every((x, i) => same(x, b[i]))
  if (a !== null && b !== null && typeof a === 'object' && typeof b === 'object') {
    const ka = Object.keys(a).filter((k) => (a as Record<string, unknown>)[k] !== undefined).sort()
    const kb = Object.keys(b).filter((k) => (b as Record<string, unknown>)[k] !== undefined).sort()
    return same(ka, kb) && ka.every((k) => same((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k]))
  }
  return a === b
}

t.test('valid route tables load as documented (defaults, units, inheritance), and a loaded config written back loads as itself', async (t) => {
  await holds(t, fc.property(validFile, (file) => {
    const c = parseGatewayConfig(file, 'inline')
    const problem = problemOf(c)
    if (problem !== undefined) throw new Error(`unusable: ${problem}`)
    if (!same(c, expected(file))) throw new Error(`loaded as ${JSON.stringify(c)}`)
    // nothing lost, no default applied twice
    if (!same(parseGatewayConfig(JSON.parse(JSON.stringify(render(c))), 'again'), c)) throw new Error('render -> load is not the identity')
  }), runs())
})

// YAML and file I/O make a case ~20 times dearer than the in-memory properties
t.test('valid route tables written as YAML or JSON files load as the same config', async (t) => {
  await holds(t, fc.property(validFile, (file) => {
    const c = parseGatewayConfig(file, 'inline')
    writeFileSync(YAML_FILE, toYaml(file))
    if (!same(loadGatewayConfig(YAML_FILE), c)) throw new Error('the YAML file loads differently')
    writeFileSync(JSON_FILE, JSON.stringify(file, null, 2))
    if (!same(loadGatewayConfig(JSON_FILE), c)) throw new Error('the JSON file loads differently')
  }), runs(0.1, 50)) // two files written and loaded per case (~1.4 ms): a tenth of the cases in the long run
})

// Building a gateway costs ~14 ms (the share is below). The properties
// above check the same through problemOf at full count; this one is the ground truth it stands for.
t.test('every config the loader accepts (valid tables, and changed ones it still takes) builds a gateway', async (t) => {
  await holds(t, fc.asyncProperty(validFile, fc.nat(), fc.option(mutation, { nil: undefined }), async (file, pick, m) => {
    const all = paths(file)
    const doc = m === undefined ? file : mutate(file, all[pick % all.length]!, m).doc
    let config: GatewayConfig
    try {
      config = parseGatewayConfig(doc, 'inline')
    } catch {
      fc.pre(false)
      return
    }
    // keys are fetched from a closed local port: no lookup of the generated hosts
    config.issuers = config.issuers.map((i) => ({ ...i, jwksUri: 'http://127.0.0.1:9/jwks.json' }))
    const gw = await buildGateway({ config, logger: false })
    try {
      await gw.app.ready()
    } finally {
      await gw.close()
    }
  }), runs(0.01, 10), { timeout: 20_000 }) // a gateway built per case (~14 ms): 1 case in 100 in the long run
})

// ---- counterexamples the properties above found (shrunk), fixed in gateway/config.ts ----

const ISSUER = { issuer: 'http://127.0.0.1', audience: [' '] }
const ROUTE = { prefix: '/', upstream: 'http://127.0.0.1' }
const regressions: Array<[name: string, doc: unknown, error: RegExp]> = [
  // the duration pattern matches `0s`: the rate-limit plugin then refused the route at boot with a plain Error
  ['a zero rate-limit window', { issuers: [ISSUER], routes: [{ ...ROUTE, rateLimit: { max: 1, timeWindow: '0s' } }] }, /^Invalid configuration: inline: routes\/0\/rateLimit\/timeWindow: must be a duration greater than zero$/],
  // ... and a zero timeout switched the upstream timeout off (undici: 0 = none)
  ['a zero upstream timeout', { issuers: [ISSUER], timeouts: { headers: '0.000ms' }, routes: [ROUTE] }, /^Invalid configuration: inline: timeouts\/headers: must be a duration greater than zero$/],
  ['a zero breaker reset', { issuers: [ISSUER], breaker: { resetTimeout: '0' }, routes: [ROUTE] }, /^Invalid configuration: inline: breaker\/resetTimeout: must be a duration greater than zero$/],
  // 400 digits parse as Infinity
  ['an infinite rate-limit window', { issuers: [ISSUER], rateLimit: { max: 1, timeWindow: '9'.repeat(400) }, routes: [ROUTE] }, /^Invalid configuration: inline: rateLimit\/timeWindow: must be a finite duration$/],
  ['an infinite route timeout', { issuers: [ISSUER], routes: [{ ...ROUTE, timeouts: { body: 1e308 } }] }, /^Invalid configuration: inline: routes\/0\/timeouts\/body: must be a finite duration$/],
  // jwks-auth refused these at boot (AuthOptionsError), after the loader had accepted the file
  ['an issuer listed twice', { issuers: [ISSUER, ISSUER], routes: [ROUTE] }, /^Invalid configuration: inline: issuers\/1\/issuer: "http:\/\/127\.0\.0\.1" is listed twice$/],
  ['an issuer that is not a URL', { issuers: [{ ...ISSUER, issuer: 'http://' }], routes: [ROUTE] }, /^Invalid configuration: inline: issuers\/0\/issuer: not a valid URL$/],
  ['an issuer whose derived JWKS address has a query', { issuers: [{ ...ISSUER, issuer: 'http://x?y#z' }], routes: [ROUTE] }, /^Invalid configuration: inline: issuers\/0\/issuer: the JWKS address must name a document/],
  // Fastify threw `TypeError: invalid IP address: http:/` when the gateway's app was created
  ['a trusted proxy that is not an address', { issuers: [ISSUER], trustProxy: 'http:// x', routes: [ROUTE] }, /^Invalid configuration: inline: trustProxy: "http:\/\/ x" is not an IP address, a CIDR range or one of loopback, linklocal, uniquelocal$/],
  ['a trusted proxy list with a bad entry', { issuers: [ISSUER], trustProxy: ['10.0.0.1', '10.0.0.0/0'], routes: [ROUTE] }, /^Invalid configuration: inline: trustProxy\/1: "10\.0\.0\.0\/0": the prefix length must be 1 to 32 \(or a netmask\)$/]
]
for (const [name, doc, error] of regressions) {
  t.test(`regression: ${name} is a ConfigError naming the setting`, async (t) => {
    t.throws(() => parseGatewayConfig(doc, 'inline'), error)
  })
}

t.test('regression: trusted proxies Fastify accepts still load (addresses, CIDRs, netmasks, named ranges, a comma-separated string)', async (t) => {
  for (const trustProxy of ['10.0.0.1', '10.0.0.0/8', '10.0.0.0/255.0.0.0', '::1', 'fe80::/10', 'loopback', '127.0.0.1, ::1,uniquelocal', ['linklocal', '192.168.0.0/16']]) {
    const c = parseGatewayConfig({ issuers: [ISSUER], trustProxy, routes: [ROUTE] }, 'inline')
    t.same(c.trustProxy, trustProxy)
    t.equal(problemOf(c), undefined, JSON.stringify(trustProxy))
  }
})
