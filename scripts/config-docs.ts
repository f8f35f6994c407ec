// Prints docs/configuration.md, the configuration reference of every process, from the env tables in
// the code (each process's *_PROCESS_ENV and the shared groups) and the route file's JSON schema.
//   node --import tsx scripts/config-docs.ts > docs/configuration.md    regenerate
//   node --import tsx scripts/config-docs.ts --check                    exit 1 when the file is stale
// test/config-docs.test.ts fails when the committed file and this output differ.
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { DEFAULT_ALGORITHMS } from '@portcullis/jwks-auth'
import { AUTH_PROCESS_ENV } from '../auth/config.js'
import { COMMANDS } from '../cli/commands.js'
import { STACK_CHILD_ENV, STACK_PROCESS_ENV } from '../cli/stack.js'
import { DEFAULT_BREAKER, DEFAULT_RATE_LIMIT, DEFAULT_TIMEOUTS } from '../gateway/config.js'
import { GATEWAY_PROCESS_ENV } from '../gateway/main.js'
import { DURATION_PATTERN, ROUTE_FILE_SCHEMA } from '../gateway/route-schema.js'
import { durationText, LOG_ENV, processEnvRows, type EnvGroup, type EnvTable, type ProcessEnv } from '../lib/env.js'
import { JWKS_ENV } from '../lib/jwks-env.js'
import { TRACING_ENV } from '../lib/tracing-env.js'
import { ROTATION_PROCESS_ENV } from '../rotation/config.js'
import { SERVICE_PROCESS_ENV } from '../services/config.js'
import { STORE_ENV } from '../store/config.js'
import { KEY_TIMINGS_ENV } from '../store/key-timings.js'
import { SECRETS_ENV } from '../store/secrets.js'

export const DOCS_PATH = fileURLToPath(new URL('../docs/configuration.md', import.meta.url))
export const REGENERATE = 'node --import tsx scripts/config-docs.ts > docs/configuration.md'

/** A process as the docs show it: the `portcullis` command that runs it and its env tables. */
export interface DocProcess {
  /** Name in cli/commands.ts (its summary is the section's first line). */
  command: string
  /** Heading, e.g. `portcullis services <kind>`. */
  title: string
  env: ProcessEnv
  /** What else the section says (hand-written). */
  note?: string
}

export const PROCESSES: readonly DocProcess[] = [
  { command: 'auth', title: 'portcullis auth', env: AUTH_PROCESS_ENV, note: 'The key timings are checked at boot by the rules the rotation worker applies.' },
  { command: 'gateway', title: 'portcullis gateway', env: GATEWAY_PROCESS_ENV, note: 'What is routed, verified, authorized and rate limited comes from the route file (below) that `GATEWAY_CONFIG` names.' },
  { command: 'rotation', title: 'portcullis rotation', env: ROTATION_PROCESS_ENV, note: 'With `--once` (one tick, then exit) it reads the same variables and opens no metrics listener.' },
  { command: 'services', title: 'portcullis services <kind>', env: SERVICE_PROCESS_ENV, note: 'One table for the three (`user`, `order`, `product`); each listens on its own port variable.' },
  { command: 'start', title: 'portcullis start', env: STACK_PROCESS_ENV, note: 'The stack starts every process above as a child and passes its environment on, so each child reads its own variables (its section); it sets `PORTCULLIS_DATA_DIR` (absolute), `AUTH_ISSUER`, `GATEWAY_CONFIG` for the gateway and, in demo mode, `SERVICE_CLIENT_ID` / `SERVICE_CLIENT_SECRET` for order-service.' }
]

/** The shared groups, in the order of their sections. */
export const SHARED_GROUPS: readonly EnvGroup[] = [STORE_ENV, SECRETS_ENV, KEY_TIMINGS_ENV, JWKS_ENV, TRACING_ENV, LOG_ENV]

const capital = (s: string): string => s.charAt(0).toUpperCase() + s.slice(1)

/** GitHub's heading anchor: lower case, punctuation but `-` and `_` dropped, spaces as `-`. */
export function anchor (heading: string): string {
  return heading.toLowerCase().replace(/[^a-z0-9 _-]/g, '').replace(/ /g, '-')
}

const code = (s: string): string => s.includes('`') ? `\`\` ${s} \`\`` : `\`${s}\``
const cell = (s: string): string => s.replace(/\|/g, '\\|').replace(/\n/g, ' ')
const defaultCell = (d: string): string => (d === 'unset' ? 'unset' : code(d))

function envTableMd (rows: EnvTable): string {
  return ['| Variable | Default | Meaning |', '| --- | --- | --- |',
    ...rows.map(([name, def, meaning]) => `| ${code(name)} | ${cell(defaultCell(def))} | ${cell(meaning)} |`)].join('\n')
}

function groupLink (g: EnvGroup): string {
  return `[${g.title}](#${anchor(capital(g.title))})`
}

/** Which process defines a variable in its own table (for the stack's references to its children). */
function ownerOf (name: string): DocProcess | undefined {
  return PROCESSES.find((p) => p.command !== 'start' && p.env.own.some(([n]) => n === name))
}

function processSection (p: DocProcess): string {
  const summary = COMMANDS.find((c) => c.name === p.command)?.summary
  if (summary === undefined) throw new Error(`config-docs: no command "${p.command}" in cli/commands.ts`)
  for (const g of p.env.shared) {
    if (!SHARED_GROUPS.includes(g)) throw new Error(`config-docs: ${p.title} reads the group "${g.title}", which has no section: add it to SHARED_GROUPS`)
  }
  processEnvRows(p.env) // throws when one name has two rows
  const out = [`## \`${p.title}\``, '', `${capital(summary)}.${p.note === undefined ? '' : ` ${p.note}`}`, '',
    envTableMd(p.env.own), '']
  if (p.env.shared.length > 0) {
    out.push(`Also reads the shared groups: ${p.env.shared.map((g) => `${groupLink(g)} (${g.rows.map(([n]) => code(n)).join(', ')})`).join('; ')}.`, '')
  }
  if (p.command === 'start') {
    out.push('Variables of the children that the stack reads too (each is defined in its child\'s table):', '',
      '| Variables | Used by the stack for |', '| --- | --- |')
    for (const [names, use] of STACK_CHILD_ENV) {
      const linked = names.map((n) => {
        const owner = ownerOf(n)
        if (owner === undefined) throw new Error(`config-docs: the stack reads ${n}, which no child's table defines`)
        return `[${code(n)}](#${anchor(`\`${owner.title}\``)})`
      })
      out.push(`| ${linked.join(', ')} | ${cell(use)} |`)
    }
    out.push('')
  }
  return out.join('\n')
}

function groupSection (g: EnvGroup): string {
  const readers = PROCESSES.filter((p) => p.env.shared.includes(g)).map((p) => `[\`${p.title}\`](#${anchor(`\`${p.title}\``)})`)
  return [`### ${capital(g.title)}`, '', `Read by ${readers.join(', ')}.`, '', envTableMd(g.rows), ''].join('\n')
}

// ---- the route file, from gateway/route-schema.ts ------------------------------------------------

type Schema = {
  type?: string
  description?: string
  pattern?: string
  minimum?: number
  exclusiveMinimum?: number
  minLength?: number
  minItems?: number
  const?: unknown
  enum?: readonly unknown[]
  anyOf?: readonly Schema[]
  items?: Schema
  properties?: Record<string, Schema>
  required?: readonly string[]
}

const seconds = (n: number): string => durationText(n)

/**
 * Default (Markdown) and meaning of every key of the route file, by its path (`routes[].auth`). The schema gives
 * the keys and their types; a key it has that is missing here (or one named here that it does not
 * have) stops the generator.
 */
export const ROUTE_KEYS: Record<string, { def?: string, meaning?: string }> = {
  issuers: { def: 'required when a route has `auth`', meaning: 'the token issuers accepted' },
  'issuers[].issuer': { meaning: 'the exact `iss` accepted (the allowlist); keys are fetched only from this issuer\'s JWKS' },
  'issuers[].jwksUri': { def: code('<issuer>/.well-known/jwks.json'), meaning: 'where the issuer\'s keys are; never taken from a token' },
  'issuers[].revocations': { def: 'unset', meaning: 'where the issuer\'s revocations come from: its revocation feed (Portcullis\' auth service: `<issuer>/auth/revocations`; `portcullis start` sets it), or `redis`: the gateway\'s REDIS_URL, where the auth service publishes them when it has the same REDIS_URL; revoked sessions, users, tokens and keys refused within about a second; unset: tokens are valid until they expire' },
  'issuers[].audience': { meaning: 'the token\'s `aud` must contain one of them exactly' },
  'issuers[].algorithms': { def: code(JSON.stringify(DEFAULT_ALGORITHMS)), meaning: 'the pinned signature algorithms' },
  trustProxy: { def: '`false`', meaning: 'who may set `X-Forwarded-*`: `false` (nobody: they are rewritten from the socket), `true` (every hop: only behind a proxy you control), a hop count, or addresses/CIDRs' },
  rateLimit: { def: code(`{ max: ${DEFAULT_RATE_LIMIT.max}, timeWindow: ${seconds(DEFAULT_RATE_LIMIT.timeWindow)} }`), meaning: 'default budget per caller (token `sub`, else client IP) of every route without its own; `false` disables it' },
  'rateLimit.max': { meaning: 'requests per `timeWindow`' },
  'rateLimit.timeWindow': { def: code(seconds(DEFAULT_RATE_LIMIT.timeWindow)), meaning: 'the window of `max`' },
  timeouts: { def: 'those of its keys', meaning: 'default upstream timeouts of every route' },
  'timeouts.connect': { def: code(seconds(DEFAULT_TIMEOUTS.connect)), meaning: 'TCP (and TLS) connect' },
  'timeouts.headers': { def: code(seconds(DEFAULT_TIMEOUTS.headers)), meaning: 'from the request sent until the response headers' },
  'timeouts.body': { def: code(seconds(DEFAULT_TIMEOUTS.body)), meaning: 'between two chunks of the response body' },
  breaker: { def: 'those of its keys', meaning: 'circuit breaker, per upstream origin' },
  'breaker.failureThreshold': { def: code(String(DEFAULT_BREAKER.failureThreshold)), meaning: 'consecutive connection errors / timeouts that open it' },
  'breaker.resetTimeout': { def: code(seconds(DEFAULT_BREAKER.resetTimeout)), meaning: 'how long it stays open before one probe request' },
  routes: { meaning: 'the routes, each a path prefix proxied to an upstream' },
  'routes[].name': { def: 'the prefix', meaning: 'the `route` label of the route\'s 429s in portcullis_rate_limit_rejections_total; only a label: two routes with one name keep their own budgets' },
  'routes[].prefix': { meaning: 'path prefix, e.g. `/api/users`: matches itself and everything under it, case-sensitively; no `.`/`..` segments, each prefix once' },
  'routes[].upstream': { meaning: '`http(s)://host:port[/path]`; the prefix is replaced by the upstream\'s path' },
  'routes[].rewritePrefix': { def: 'the upstream\'s path', meaning: 'path that replaces the prefix instead' },
  'routes[].methods': { def: 'all of those', meaning: 'methods proxied; others are 404' },
  'routes[].auth': { def: '`true`', meaning: '`false`: no token needed on this route' },
  'routes[].roles': { def: 'none', meaning: 'the token\'s `role` must be one of these (else 403)' },
  'routes[].permissions': { def: 'none', meaning: 'the token\'s `permissions` must contain all of these' },
  'routes[].scopes': { def: 'none', meaning: 'the token\'s `scope` must contain all of these' },
  'routes[].rateLimit': { def: 'the top-level `rateLimit`', meaning: 'this route\'s own budget (shared by the prefix and everything under it), or `false` for none' },
  'routes[].rateLimit.max': { meaning: 'requests per `timeWindow`' },
  'routes[].rateLimit.timeWindow': { def: code(seconds(DEFAULT_RATE_LIMIT.timeWindow)), meaning: 'the window of `max`' },
  'routes[].timeouts': { def: 'the top-level `timeouts`', meaning: 'this route\'s upstream timeouts' },
  'routes[].timeouts.connect': { def: '`timeouts.connect`', meaning: 'TCP (and TLS) connect' },
  'routes[].timeouts.headers': { def: '`timeouts.headers`', meaning: 'from the request sent until the response headers' },
  'routes[].timeouts.body': { def: '`timeouts.body`', meaning: 'between two chunks of the response body' }
}

function isDuration (s: Schema): boolean {
  return s.anyOf?.some((b) => b.pattern === DURATION_PATTERN) === true
}

/** The type of a schema node in a few words: `duration`, `integer >= 1`, `list of strings`... */
export function schemaType (s: Schema): string {
  if (isDuration(s)) return 'duration'
  if (s.anyOf !== undefined) return s.anyOf.map(schemaType).join(' or ')
  if (s.const !== undefined) return code(JSON.stringify(s.const))
  if (s.enum !== undefined) return `one of ${s.enum.map((v) => code(String(v))).join(', ')}`
  switch (s.type) {
    case 'string':
      return s.pattern !== undefined ? `string matching ${code(s.pattern)}` : s.minLength !== undefined ? 'non-empty string' : 'string'
    case 'integer':
    case 'number':
      return s.minimum !== undefined ? `${s.type} >= ${s.minimum}` : s.exclusiveMinimum !== undefined ? `${s.type} > ${s.exclusiveMinimum}` : s.type
    case 'array': {
      const i = s.items
      const item = i === undefined ? 'values' : i.type === 'object' ? 'objects' : i.enum !== undefined ? i.enum.map((v) => code(String(v))).join(', ') : `${schemaType(i)}s`
      return `${s.minItems !== undefined && s.minItems > 0 ? 'non-empty ' : ''}list of ${item}`
    }
    default:
      return s.type ?? 'any'
  }
}

export interface RouteKeyRow { path: string, type: string, def: string, meaning: string }

/** Every key of the route file: the schema's properties, depth first, objects inside lists as `list[].key`. */
export function routeKeyRows (): RouteKeyRow[] {
  const rows: RouteKeyRow[] = []
  const walk = (props: Record<string, Schema>, required: readonly string[], prefix: string): void => {
    for (const [key, s] of Object.entries(props)) {
      const path = `${prefix}${key}`
      const doc = ROUTE_KEYS[path]
      const meaning = doc?.meaning ?? (isDuration(s) ? undefined : s.description)
      if (meaning === undefined) throw new Error(`config-docs: the route file key "${path}" (gateway/route-schema.ts) has no meaning: add it to ROUTE_KEYS in scripts/config-docs.ts`)
      rows.push({ path, type: schemaType(s), def: required.includes(key) ? 'required' : (doc?.def ?? 'unset'), meaning })
      const objectBranch = s.type === 'object' ? s : s.anyOf?.find((b) => b.type === 'object')
      if (objectBranch?.properties !== undefined) walk(objectBranch.properties, objectBranch.required ?? [], `${path}.`)
      if (s.items?.properties !== undefined) walk(s.items.properties, s.items.required ?? [], `${path}[].`)
    }
  }
  const root = ROUTE_FILE_SCHEMA as unknown as Schema
  walk(root.properties!, root.required ?? [], '')
  const unknown = Object.keys(ROUTE_KEYS).filter((k) => !rows.some((r) => r.path === k))
  if (unknown.length > 0) throw new Error(`config-docs: ROUTE_KEYS names ${unknown.join(', ')}, which gateway/route-schema.ts does not have`)
  return rows
}

const ROUTE_FILE_HEADING = 'Route file (`GATEWAY_CONFIG`)'

function routeFileSection (): string {
  return [
    `## ${ROUTE_FILE_HEADING}`, '',
    'YAML, or JSON when the name ends in `.json`; validated at boot against the JSON schema in',
    '`gateway/route-schema.ts` (unknown keys are refused), which gives the keys and types below. A bad file',
    'stops the boot naming the file, the JSON path of the problem and the rule (e.g.',
    '`routes.yaml: routes/2/upstream: must match pattern "^https?://"`). A complete example:',
    '`gateway/routes.example.yaml`.', '',
    '| Key | Type | Default | Meaning |', '| --- | --- | --- | --- |',
    ...routeKeyRows().map((r) => `| ${code(r.path)} | ${cell(r.type)} | ${cell(r.def)} | ${cell(r.meaning)} |`),
    ''
  ].join('\n')
}

/** The whole of docs/configuration.md. */
export function renderConfigDocs (): string {
  const toc = [...PROCESSES.map((p) => `[\`${p.title}\`](#${anchor(`\`${p.title}\``)})`),
    ...SHARED_GROUPS.map(groupLink), `[route file](#${anchor(ROUTE_FILE_HEADING)})`]
  return [
    `<!-- Generated by scripts/config-docs.ts from the env tables in the code; do not edit. Regenerate: ${REGENERATE} -->`, '',
    '# Configuration reference', '',
    'Every Portcullis process reads its settings from environment variables, validated at boot: a bad',
    'value stops the process with one line naming the variable (`Invalid configuration: AUTH_PORT: ...`).',
    'Each process\'s `--help` lists the same variables, from the same tables in the code. Any command',
    'run with `DEBUG=1` prints the stack trace of a failure instead of the one line.', '',
    `Contents: ${toc.join(', ')}.`, '',
    '## Environment variables and the route file', '',
    'Environment variables configure a process: where it listens, its store, Redis, TLS, key timings,',
    'JWKS caching and logging. The gateway\'s routing is not in the environment: `GATEWAY_CONFIG` names',
    'a route file (YAML or JSON) holding the trusted issuers, the routes with their upstreams and',
    'access rules, rate limits, timeouts and the circuit breaker; it is read once at boot. No variable',
    'overrides a key of the route file, and the route file sets no process setting. `portcullis start`',
    'writes a route file for the example services unless `GATEWAY_CONFIG` is set.', '',
    '## Durations', '',
    'A duration variable takes a number of seconds (`900`) or a number with a unit: `250ms`, `30s`, `5m`,',
    '`1h`, `7d` (decimals are allowed: `1.5s`). Route-file durations are a number of seconds (`0.5`) or',
    'a string with a unit (`250ms`, `5s`, `1m`, `1h`). Defaults below are written with the largest whole unit.', '',
    'A default of "unset" means the variable has no value unless you set one; the meaning says what',
    'happens then. An empty value counts as unset (but for `NO_COLOR`, which counts when present at all).', '',
    ...PROCESSES.map(processSection),
    '## Shared groups', '',
    'Variables several processes read, each defined once in the code and read the same way everywhere.', '',
    ...SHARED_GROUPS.map(groupSection),
    '## One-shot commands', '',
    '`portcullis keys` reads the [store](#store), the [key-encryption secrets](#key-encryption-secrets), the',
    '[key timings](#key-timings), `KEY_SIZE` (as `portcullis rotation`) and `LOG_LEVEL` (default `warn`, to',
    'stderr). `portcullis users` reads the store and `PASSWORD_SCRYPT_N`/`_R`/`_P` (as `portcullis auth`);',
    '`portcullis clients` reads the store. Their `--help` says the same.', '',
    routeFileSection()
  ].join('\n')
}

/** Where `actual` first differs from `expected`, as a one-line hint. */
export function firstDifference (expected: string, actual: string): string {
  const e = expected.split('\n')
  const a = actual.split('\n')
  for (let i = 0; i < Math.max(e.length, a.length); i++) {
    if (e[i] !== a[i]) return `line ${i + 1}:\n  generated: ${e[i] ?? '(end of file)'}\n  committed: ${a[i] ?? '(end of file)'}`
  }
  return 'no difference'
}

// `--check [file]`: compare instead of print (the file defaults to docs/configuration.md).
if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) {
  const doc = renderConfigDocs()
  const check = process.argv.indexOf('--check')
  if (check !== -1) {
    const path = process.argv[check + 1] ?? DOCS_PATH
    let committed = ''
    try {
      committed = readFileSync(path, 'utf8')
    } catch {
      committed = ''
    }
    if (committed !== doc) {
      console.error(`${path} is out of date with the env tables in the code; regenerate it:\n  ${REGENERATE}\nfirst difference at ${firstDifference(doc, committed)}`)
      process.exitCode = 1
    } else {
      console.error(`${path} is up to date`)
    }
  } else {
    process.stdout.write(doc)
  }
}
