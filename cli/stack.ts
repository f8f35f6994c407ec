import { createServer, type Server } from 'node:net'
import { join, resolve } from 'node:path'
import { envBool, envDuration, envEnum, envHelp, envInt, envString, type Env, type EnvTable, type ProcessEnv, wrapHelp } from '../lib/env.js'
import { ConfigError, UsageError } from '../lib/errors.js'
import { listenError } from '../lib/listen.js'
import { openDb, type StoreLocation } from '../store/index.js'
import { dbOptionsFromEnv, makeDataDir, STORE_ENV } from '../store/config.js'
import { startChild, stopChildren, waitForHttp, type ChildSpec, type LogFormat, type RunningChild } from './stack/children.js'
import { DEMO_LOGIN_USER_MAX, seedDemo, type DemoState } from './stack/demo.js'
import { writeStackRouteFile } from './stack/routes.js'
import { removeStackState, runningStack, stackState, writeStackState, STACK_STATE_FILE } from '../store/stack-state.js'
import { banner, type StackUrls } from './stack/walkthrough.js'
import { describeStore } from '../store/command-store.js'

/** Every variable the stack reads for itself; `--help` and docs/configuration.md list these. */
export const STACK_ENV: EnvTable = [
  ['PORTCULLIS_DEMO', 'true', 'demo mode, true/false: create the demo users and client on the first start, print them, give order-service the client (--demo / --no-demo win over it)'],
  ['STACK_LOG_FORMAT', 'pretty on a terminal, else json', 'child log lines as "time LEVEL msg k=v" (pretty) or raw pino JSON (json), each after a [name] prefix (--log-format wins over it)'],
  ['STACK_READY_TIMEOUT', '1m', 'how long to wait for each process to be ready before stopping everything'],
  ['STACK_STOP_TIMEOUT', '10s', 'grace period before a child that has not stopped on SIGINT is killed'],
  ['STACK_RATE_LIMIT_MAX', '100', 'requests per minute per caller on each route of the generated route table'],
  ['STACK_PRODUCTS_RATE_LIMIT_MAX', '10', 'the same for /api/products, low to show a 429'],
  ['NO_COLOR', 'unset', 'set (to anything): the [name] prefixes of child log lines are not coloured']
]

/** Everything `portcullis start` reads for itself: STACK_ENV and the store (it seeds the demo accounts). */
export const STACK_PROCESS_ENV: ProcessEnv = { own: STACK_ENV, shared: [STORE_ENV] }

/**
 * Variables of the children that the stack reads too, and what for; each is defined in its child's
 * table (AUTH_ENV, GATEWAY_ENV, ROTATION_ENV, SERVICE_ENV).
 */
export const STACK_CHILD_ENV: ReadonlyArray<readonly [names: readonly string[], use: string]> = [
  [['AUTH_HOST', 'AUTH_PORT', 'AUTH_ADMIN_HOST', 'AUTH_ADMIN_PORT', 'GATEWAY_HOST', 'GATEWAY_PORT', 'GATEWAY_ADMIN_HOST', 'GATEWAY_ADMIN_PORT', 'ROTATION_METRICS_HOST', 'ROTATION_METRICS_PORT',
    'SERVICE_HOST', 'USER_SERVICE_PORT', 'ORDER_SERVICE_PORT', 'PRODUCT_SERVICE_PORT', 'SERVICE_ADMIN_HOST', 'USER_SERVICE_ADMIN_PORT', 'ORDER_SERVICE_ADMIN_PORT', 'PRODUCT_SERVICE_ADMIN_PORT'],
    'where the stack waits for each child and the URLs it prints; all checked free before anything starts (0, any free port, is refused)'],
  [['AUTH_LOGIN_USER_MAX'], `unset in demo mode: ${DEMO_LOGIN_USER_MAX} for auth (the walkthrough logs alice and bob in on every paste; auth's own default, 5 per 5 minutes, is for real accounts)`],
  [['AUTH_ISSUER'], 'unset: http://AUTH_HOST:AUTH_PORT; passed to every child and named in the generated route file'],
  [['AUTH_AUDIENCE'], 'its first entry is the audience of the generated route file'],
  [['GATEWAY_CONFIG'], 'unset: a route table for the three services is written to <data dir>/gateway-routes.yaml on every start and passed to the gateway'],
  [['GATEWAY_STATUS_KEYS_URL'], 'unset: auth\'s admin /keys, so the gateway\'s /status page shows the key timeline'],
  [['AUTH_REVOCATIONS_URL'], 'unset: <issuer>/auth/revocations for the services (the generated route file names it for the gateway), so revocations reach every verifier'],
  [['SERVICE_CLIENT_ID'], 'unset in demo mode: order-service gets the demo client (SERVICE_CLIENT_ID and SERVICE_CLIENT_SECRET)'],
  [['PASSWORD_SCRYPT_N', 'PASSWORD_SCRYPT_R', 'PASSWORD_SCRYPT_P'], 'scrypt parameters of the demo users\' password hashes, as auth hashes them']
]

/** STACK_CHILD_ENV as `--help` lines: the names, then what the stack uses them for. */
function childEnvHelp (): string {
  return STACK_CHILD_ENV.map(([names, use]) => `  ${wrapHelp(names.join(', '), 2)}\n      ${wrapHelp(use, 6)}`).join('\n')
}

export const help = `Usage: portcullis start [--demo | --no-demo] [--log-format pretty|json]

Starts the whole stack as child processes of this one, on the embedded SQLite store in
PORTCULLIS_DATA_DIR (./data), or on PostgreSQL with DATABASE_URL: the rotation worker, auth, the
user/order/product example services and the gateway (with a route table for the three services
written to <data dir>/gateway-routes.yaml unless GATEWAY_CONFIG names your own). Each child's log
lines are prefixed with its name; Ctrl-C (or SIGTERM) stops them all, each with SIGINT (no drain
delay). A second start reuses the data folder: same keys, users and clients. While it runs,
<data dir>/${STACK_STATE_FILE} names its pid and store: "portcullis keys|users|clients" run on the
same data folder use that store, or refuse when their own settings name another one; a second
stack on the folder refuses to start.

Demo mode (on by default for "portcullis start", off for the single-process commands) creates the
demo users alice, bob and admin and a demo service client "order-service" on the first start only,
prints them, and gives order-service its client so it can call product-service as itself. Their
passwords are public, so auth's per-username login limit is raised to ${DEMO_LOGIN_USER_MAX} per window
(AUTH_LOGIN_USER_MAX, unless set): the walkthrough it prints can be pasted again and again.

Options:
  --demo / --no-demo         create and print the demo accounts (default: PORTCULLIS_DEMO, else on)
  --log-format pretty|json   child log lines as "time LEVEL msg k=v" or raw pino JSON
                             (default: STACK_LOG_FORMAT, else pretty on a terminal, json otherwise)

${envHelp(STACK_PROCESS_ENV)}
Environment of the children, read by the stack too (each child reads all of its own from the
environment the stack passes on; see its --help):
${childEnvHelp()}`

interface StackFlags { demo: boolean | undefined, logFormat: LogFormat | undefined }

function parseFlags (argv: string[]): StackFlags {
  const flags: StackFlags = { demo: undefined, logFormat: undefined }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!
    if (a === '--demo') flags.demo = true
    else if (a === '--no-demo') flags.demo = false
    else if (a === '--log-format' || a.startsWith('--log-format=')) {
      const v = a.includes('=') ? a.slice(a.indexOf('=') + 1) : argv[++i]
      if (v !== 'pretty' && v !== 'json') throw new UsageError('--log-format expects pretty or json')
      flags.logFormat = v
    } else throw new UsageError(`unknown option "${a}" (see portcullis start --help)`)
  }
  return flags
}

/**
 * Where each child will listen, by port setting: host and port. The defaults are the children's own
 * (a process's config module cannot be imported here; test/stack-config.test.ts compares them).
 */
export function listeners (env: Env): Map<string, { host: string, port: number }> {
  const at = (hostVar: string, portVar: string, def: number): [string, { host: string, port: number }] =>
    [portVar, { host: envString(env, hostVar, '127.0.0.1'), port: envInt(env, portVar, def, { min: 1, max: 65535 }) }]
  return new Map([
    at('ROTATION_METRICS_HOST', 'ROTATION_METRICS_PORT', 8092), at('AUTH_HOST', 'AUTH_PORT', 3010), at('AUTH_ADMIN_HOST', 'AUTH_ADMIN_PORT', 8091),
    at('SERVICE_HOST', 'USER_SERVICE_PORT', 3001), at('SERVICE_HOST', 'PRODUCT_SERVICE_PORT', 3003), at('SERVICE_HOST', 'ORDER_SERVICE_PORT', 3002),
    at('SERVICE_ADMIN_HOST', 'USER_SERVICE_ADMIN_PORT', 8093), at('SERVICE_ADMIN_HOST', 'ORDER_SERVICE_ADMIN_PORT', 8094), at('SERVICE_ADMIN_HOST', 'PRODUCT_SERVICE_ADMIN_PORT', 8095),
    at('GATEWAY_HOST', 'GATEWAY_PORT', 8080), at('GATEWAY_ADMIN_HOST', 'GATEWAY_ADMIN_PORT', 8090)
  ])
}

function urlsFromEnv (env: Env): StackUrls {
  const at = listeners(env)
  const url = (setting: string): string => {
    const { host, port } = at.get(setting)!
    const h = host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host
    return `http://${h.includes(':') ? `[${h}]` : h}:${port}`
  }
  const auth = url('AUTH_PORT')
  return {
    auth,
    issuer: envString(env, 'AUTH_ISSUER', auth).replace(/\/$/, ''),
    authAdmin: url('AUTH_ADMIN_PORT'),
    rotationMetrics: url('ROTATION_METRICS_PORT'),
    user: url('USER_SERVICE_PORT'),
    order: url('ORDER_SERVICE_PORT'),
    product: url('PRODUCT_SERVICE_PORT'),
    userAdmin: url('USER_SERVICE_ADMIN_PORT'),
    orderAdmin: url('ORDER_SERVICE_ADMIN_PORT'),
    productAdmin: url('PRODUCT_SERVICE_ADMIN_PORT'),
    gateway: url('GATEWAY_PORT'),
    gatewayAdmin: url('GATEWAY_ADMIN_PORT')
  }
}

/**
 * Every port the stack will use must be free before anything starts: the stack waits for each child
 * by polling its port, so a process already listening there (another stack, say) would pass for the
 * child. Each probe stays bound until all are checked, so two settings naming one port clash too.
 */
async function checkPortsFree (env: Env): Promise<void> {
  const held: Server[] = []
  const seen = new Map<string, string>()
  try {
    for (const [setting, { host, port }] of listeners(env)) {
      const other = seen.get(`${host}:${port}`)
      if (other !== undefined) throw new ConfigError(setting, `must differ from ${other} (${port})`)
      seen.set(`${host}:${port}`, setting)
      const srv = createServer()
      held.push(srv)
      await new Promise<void>((resolve, reject) => {
        srv.once('error', (err) => { reject(listenError(err, setting, host, port, ' (another Portcullis stack, or another program?)')) })
        srv.listen(port, host, resolve)
      })
    }
  } finally {
    await Promise.all(held.map((s) => new Promise<void>((resolve) => { if (s.listening) s.close(() => { resolve() }); else resolve() })))
  }
}

export async function run (argv: string[]): Promise<number> {
  const flags = parseFlags(argv)
  const env = process.env
  const demo = flags.demo ?? envBool(env, 'PORTCULLIS_DEMO', true)
  const logFormat: LogFormat = flags.logFormat ?? envEnum<LogFormat>(env, 'STACK_LOG_FORMAT', ['pretty', 'json'], process.stdout.isTTY ? 'pretty' : 'json')
  const readyMs = envDuration(env, 'STACK_READY_TIMEOUT', 60, { min: 1 }) * 1000
  const stopMs = envDuration(env, 'STACK_STOP_TIMEOUT', 10, { min: 0.1 }) * 1000
  const rateLimitMax = envInt(env, 'STACK_RATE_LIMIT_MAX', 100, { min: 1 })
  const productsRateLimitMax = envInt(env, 'STACK_PRODUCTS_RATE_LIMIT_MAX', 10, { min: 1 })
  const dataDir = resolve(envString(env, 'PORTCULLIS_DATA_DIR', './data'))
  const urls = urlsFromEnv(env)
  await checkPortsFree(env)
  const audience = envString(env, 'AUTH_AUDIENCE', 'portcullis').split(',')[0]!.trim()

  makeDataDir(dataDir)
  const other = runningStack(dataDir)
  if (other !== undefined) {
    throw new UsageError(`another stack runs on ${dataDir} (pid ${other.pid}, started ${other.startedAt}, on ${describeStore(other.store)}): stop it first, or give this one another PORTCULLIS_DATA_DIR`)
  }
  const dbOpts = dbOptionsFromEnv({ ...env, PORTCULLIS_DATA_DIR: dataDir })
  // The store is opened before any child starts: an unreachable one stops the stack here, and the
  // state file names it as resolved (a PostgreSQL default schema is settled once connected).
  let store: StoreLocation
  let demoState: DemoState | undefined
  let demoCreated = false
  const db = openDb(dbOpts)
  try {
    await db.ready()
    store = db.location
    console.error(`portcullis start: store: ${describeStore(store)}`)
    if (demo) ({ state: demoState, created: demoCreated } = await seedDemo(db, dataDir, env))
  } finally {
    await db.close()
  }
  let routeFile = envString(env, 'GATEWAY_CONFIG')
  if (routeFile === undefined) {
    routeFile = join(dataDir, 'gateway-routes.yaml')
    writeStackRouteFile(routeFile, {
      issuer: urls.issuer, audience, users: urls.user, orders: urls.order, products: urls.product, rateLimitMax, productsRateLimitMax
    })
  }

  const common = { PORTCULLIS_DATA_DIR: dataDir, AUTH_ISSUER: urls.issuer }
  // every example service follows the issuer's revocation feed
  const serviceEnv = { ...common, AUTH_REVOCATIONS_URL: envString(env, 'AUTH_REVOCATIONS_URL') ?? `${urls.issuer}/auth/revocations` }
  // Demo accounts have public passwords: the per-username limit protects nothing there, and at auth's
  // own 5 per 5 minutes the sixth paste of the walkthrough within 5 minutes would be refused.
  const authLimits: Record<string, string> = demoState !== undefined && envString(env, 'AUTH_LOGIN_USER_MAX') === undefined
    ? { AUTH_LOGIN_USER_MAX: String(DEMO_LOGIN_USER_MAX) }
    : {}
  const orderClient: Record<string, string> = demoState !== undefined && env.SERVICE_CLIENT_ID === undefined
    ? { SERVICE_CLIENT_ID: demoState.client.clientId, SERVICE_CLIENT_SECRET: demoState.client.clientSecret }
    : {}
  const specs: Record<string, ChildSpec> = {
    rotation: { name: 'rotation', args: ['rotation'], env: common },
    auth: { name: 'auth', args: ['auth'], env: { ...common, ...authLimits } },
    user: { name: 'user', args: ['services', 'user'], env: serviceEnv },
    product: { name: 'product', args: ['services', 'product'], env: serviceEnv },
    order: { name: 'order', args: ['services', 'order'], env: { ...serviceEnv, ...orderClient } },
    gateway: { name: 'gateway', args: ['gateway'], env: { ...common, GATEWAY_CONFIG: routeFile, GATEWAY_STATUS_KEYS_URL: envString(env, 'GATEWAY_STATUS_KEYS_URL') ?? `${urls.authAdmin}/keys` } }
  }
  const width = Math.max(...Object.keys(specs).map((k) => k.length))
  const color = process.stdout.isTTY && env.NO_COLOR === undefined
  const children: RunningChild[] = []

  let stopping: Promise<void> | undefined
  let exitCode = 0
  let wake!: () => void
  const stopped = new Promise<void>((resolve) => { wake = resolve })
  const stop = (code: number, why: string): Promise<void> => {
    if (stopping !== undefined) return stopping
    exitCode = code
    console.error(`portcullis start: ${why}; stopping ${children.length} process(es)`)
    // Reverse start order: the gateway stops taking traffic before what it calls goes away.
    stopping = stopChildren([...children].reverse(), stopMs).then(wake)
    return stopping
  }
  const onSignal = (signal: NodeJS.Signals): void => { void stop(0, `${signal} received`) }
  const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP']
  for (const s of signals) process.on(s, onSignal)
  // Last resort if this process dies without stopping them (an uncaught error): no orphans, no state file.
  const killAll = (): void => {
    for (const c of children) if (c.proc.exitCode === null && c.proc.signalCode === null) c.proc.kill('SIGKILL')
    removeStackState(dataDir)
  }
  process.on('exit', killAll)
  writeStackState(stackState(dataDir, store, dbOpts))

  const launch = (key: string): RunningChild => {
    const child = startChild(specs[key]!, children.length, process.stdout, { format: logFormat, color, width })
    children.push(child)
    console.error(`portcullis start: started ${child.spec.name} (pid ${child.proc.pid ?? '?'})`)
    void child.exited.then(({ code, signal }) => {
      if (stopping === undefined) void stop(1, `${child.spec.name} exited unexpectedly (${signal ?? `code ${code}`})`)
    })
    return child
  }
  const ready = async (child: RunningChild, url: string, ok?: (s: number, b: string) => boolean): Promise<void> => {
    await waitForHttp(url, child.spec.name, readyMs, ok, child.exited)
  }

  try {
    // The rotation worker puts the first key in place; auth signs with it; services and the
    // gateway need auth's JWKS to verify anything.
    const rotation = launch('rotation')
    await ready(rotation, `${urls.rotationMetrics}/health/live`)
    const auth = launch('auth')
    await ready(auth, `${urls.authAdmin}/health/ready`)
    // order-service calls the other two (its background catalog refresh starts at once).
    const leaves = (['user', 'product'] as const).map((k) => ({ k, child: launch(k) }))
    await Promise.all(leaves.map(({ k, child }) => ready(child, `${urls[`${k}Admin`]}/health/ready`)))
    const order = launch('order')
    await ready(order, `${urls.orderAdmin}/health/ready`)
    const gateway = launch('gateway')
    await ready(gateway, `${urls.gatewayAdmin}/health/ready`)
  } catch (err) {
    if (stopping === undefined) await stop(1, err instanceof Error ? err.message : String(err))
  }
  if (stopping === undefined) {
    process.stdout.write(banner({ urls, dataDir, routeFile, demo: demoState, demoCreated }))
  }
  await stopped
  removeStackState(dataDir)
  for (const s of signals) process.off(s, onSignal)
  process.off('exit', killAll)
  return exitCode
}
