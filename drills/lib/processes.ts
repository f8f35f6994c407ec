/**
 * The processes of a drill: `portcullis auth|gateway|rotation|services <kind>` as real child
 * processes on free 127.0.0.1 ports, each with its own environment, its JSON log lines captured and
 * parsed, waited for through its readiness URL. Everything started is tracked: `stopAll()` (register
 * it with `d.cleanup(stopAll)`) stops whatever is still running, and an exit hook SIGKILLs survivors
 * if the drill dies without its cleanup.
 *
 * The children stay in the drill's process group (the runner kills that group when a drill overruns)
 * and get an IPC channel with PORTCULLIS_STOP_WITH_STACK=1, so a child whose drill vanished stops
 * itself as a child of `portcullis start` does.
 *
 * Backends: `requireBackends()` fails naming PostgreSQL or Redis when unreachable; `createDatabase()`
 * makes a PostgreSQL database of the drill's own (dropped by its `drop()`), so runs never share keys.
 *
 *   if (!await requireBackends(d, { postgres: true, redis: true })) return  // a FAIL line naming what is missing
 *   const db = await createDatabase(); d.cleanup(db.drop)
 *   d.cleanup(() => stopAll())                      // registered last: runs first
 *   const env = baseEnv({ DATABASE_URL: db.url, ...timings })
 *   const [a1] = await authPorts(1)                 // URLs known before anything listens
 *   const rot = startRotation({ env, wait: false }) // start all at once, then wait: quicker on 2 cores
 *   const auth = startAuth({ env, ports: a1, wait: false })
 *   const svc = await startServices({ env: { ...env, AUTH_JWKS_URL: jwksUrl(a1) }, wait: false })
 *   const gw = startGateway({ env: { ...env, REDIS_URL: DRILL_REDIS_URL },
 *     routes: serviceRoutes({ issuer: env.AUTH_ISSUER!, jwksUri: jwksUrl(a1), services: svc }), wait: false })
 *   await (await rot).ready(); await (await auth).ready(); await svc.user.ready() ...; await (await gw).ready()
 *   ...; (await auth).kill('SIGKILL'); await p.exited; const again = p.restart(); await again.ready()
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import pg from 'pg'
import { stringify } from 'yaml'
import { DEFAULT_PG_SCHEMA } from '../../store/db.js'
import { freePorts } from '../../test/helpers/ports.js'
import { redisReachable, TEST_REDIS_URL } from '../../test/helpers/redis.js'
import { REPO_ROOT } from '../../test/helpers/stack.js'

export { REPO_ROOT }

/** The shared PostgreSQL server (trust auth); drills only CREATE and DROP their own databases on it. */
export const DRILL_PG_URL = process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test'
/** The shared Redis. */
export const DRILL_REDIS_URL = TEST_REDIS_URL

/** One parsed JSON log line, plus `_at`: when the drill received it (epoch ms). */
export type LogRecord = Record<string, unknown> & { msg?: string, event?: string, level?: number, time?: number, pid?: number, _at: number }

export interface ProcSpec {
  /** Label in messages: `auth-1`, `gateway-2`, ... */
  name: string
  /** `portcullis` arguments: `['auth']`, `['services', 'user']`. */
  args: string[]
  /** The child's whole environment on top of PATH/HOME (nothing else of the drill's leaks in). */
  env: Record<string, string>
  /** Public base URL (http://127.0.0.1:port). */
  base: string
  /** Admin listener base URL (health, metrics); the public one when the process has none. */
  admin: string
  /** Polled until 200 by `ready()`. */
  readyUrl: string
}

/** Lines kept per process; older ones are dropped (counted in `dropped`). */
const MAX_LINES = 50_000

/** A running (or exited) child. Restarting gives a new Proc with the same spec (same ports, same env). */
export class Proc {
  readonly spec: ProcSpec
  readonly child: ChildProcess
  readonly pid: number
  readonly startedAt = Date.now()
  /** Parsed JSON lines of stdout and stderr, in arrival order. */
  readonly logs: LogRecord[] = []
  /** Lines that were not JSON (human output, stack traces), last 200. */
  readonly text: string[] = []
  dropped = 0
  readonly exited: Promise<{ code: number | null, signal: NodeJS.Signals | null }>
  #exit: { code: number | null, signal: NodeJS.Signals | null } | undefined
  #waiters = new Set<() => void>()

  constructor (spec: ProcSpec) {
    this.spec = spec
    // DRILL_NODE_ARGS: extra node flags for every process a drill starts (e.g. --cpu-prof --cpu-prof-dir=/tmp/prof)
    const nodeArgs = (process.env.DRILL_NODE_ARGS ?? '').split(' ').filter((a) => a !== '')
    this.child = spawn(process.execPath, [...nodeArgs, '--import', 'tsx', join(REPO_ROOT, 'cli', 'portcullis.ts'), ...spec.args], {
      cwd: REPO_ROOT,
      env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...(process.env.TMPDIR !== undefined ? { TMPDIR: process.env.TMPDIR } : {}), PORTCULLIS_STOP_WITH_STACK: '1', ...spec.env },
      stdio: ['ignore', 'pipe', 'pipe', 'ipc']
    })
    if (this.child.pid === undefined) throw new Error(`${spec.name}: could not spawn`)
    this.pid = this.child.pid
    this.child.channel?.unref() // the IPC channel never keeps the drill alive
    for (const s of [this.child.stdout!, this.child.stderr!]) {
      let buf = ''
      s.setEncoding('utf8')
      s.on('data', (d: string) => {
        buf += d
        let i: number
        while ((i = buf.indexOf('\n')) >= 0) { this.#line(buf.slice(0, i)); buf = buf.slice(i + 1) }
        for (const w of this.#waiters) w()
      })
    }
    this.exited = new Promise((resolve) => {
      this.child.once('close', (code, signal) => { // after its last output was read
        this.#exit = { code, signal }
        running.delete(this)
        for (const w of this.#waiters) w()
        resolve({ code, signal })
      })
    })
    running.add(this)
  }

  #line (line: string): void {
    if (line.startsWith('{')) {
      try {
        this.logs.push({ ...(JSON.parse(line) as Record<string, unknown>), _at: Date.now() })
        if (this.logs.length > MAX_LINES) { this.logs.splice(0, this.logs.length - MAX_LINES); this.dropped += 1 }
        return
      } catch { /* not JSON after all */ }
    }
    this.text.push(line)
    if (this.text.length > 200) this.text.shift()
  }

  get name (): string { return this.spec.name }
  get base (): string { return this.spec.base }
  get admin (): string { return this.spec.admin }
  get env (): Record<string, string> { return this.spec.env }
  /** True until the process exited. */
  get alive (): boolean { return this.#exit === undefined }
  get exit (): { code: number | null, signal: NodeJS.Signals | null } | undefined { return this.#exit }

  /** The last lines it printed (JSON ones re-serialized), for error messages. */
  tail (n = 15): string {
    const json = this.logs.slice(-n).map(({ _at: _, ...r }) => JSON.stringify(r))
    return [...this.text.slice(-n), ...json].slice(-n).join('\n')
  }

  /**
   * Resolves with the first log line from index `from` on that matches (a predicate, or text the
   * line's `msg` or `event` contains); rejects after `timeoutMs` or when the process exits first.
   */
  waitFor (match: string | ((l: LogRecord) => boolean), opts: { from?: number, timeoutMs?: number } = {}): Promise<LogRecord> {
    const pred = typeof match === 'string' ? (l: LogRecord) => String(l.msg ?? '').includes(match) || l.event === match : match
    const what = typeof match === 'string' ? `"${match}"` : 'a matching line'
    return new Promise((resolve, reject) => {
      let at = opts.from ?? 0
      const check = (): void => {
        for (; at < this.logs.length; at++) {
          if (pred(this.logs[at]!)) { done(); resolve(this.logs[at]!); return }
        }
        if (!this.alive) { done(); reject(new Error(`${this.name} exited (${JSON.stringify(this.#exit)}) before ${what}:\n${this.tail()}`)) }
      }
      const timer = setTimeout(() => { done(); reject(new Error(`${this.name}: no ${what} within ${opts.timeoutMs ?? 30_000} ms:\n${this.tail()}`)) }, opts.timeoutMs ?? 30_000)
      const done = (): void => { clearTimeout(timer); this.#waiters.delete(check) }
      this.#waiters.add(check)
      check()
    })
  }

  /** Polls the readiness URL until it answers 200; rejects when the process exits or after `timeoutMs`. */
  async ready (timeoutMs = 60_000): Promise<this> {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      if (!this.alive) throw new Error(`${this.name} exited (${JSON.stringify(this.#exit)}) before it was ready:\n${this.tail()}`)
      try {
        const res = await fetch(this.spec.readyUrl, { signal: AbortSignal.timeout(2000) })
        await res.arrayBuffer()
        if (res.status === 200) return this
      } catch { /* not listening yet */ }
      if (Date.now() > deadline) throw new Error(`${this.name} not ready at ${this.spec.readyUrl} within ${timeoutMs} ms:\n${this.tail()}`)
      await sleep(100)
    }
  }

  /** Sends a signal (SIGKILL by default) to the process; no-op once it exited. */
  kill (signal: NodeJS.Signals = 'SIGKILL'): void {
    if (this.alive) {
      try { process.kill(this.pid, signal) } catch { /* already gone */ }
    }
  }

  /** SIGTERM, then SIGKILL after `graceMs`; resolves with how it exited. */
  async stop (graceMs = 10_000): Promise<{ code: number | null, signal: NodeJS.Signals | null }> {
    this.kill('SIGTERM')
    const timer = setTimeout(() => this.kill('SIGKILL'), graceMs)
    const res = await this.exited
    clearTimeout(timer)
    return res
  }

  /** The same process again: same arguments, environment and ports (the old one must have exited). Not waited for: call `ready()`. */
  restart (): Proc {
    if (this.alive) throw new Error(`${this.name} is still running (pid ${this.pid})`)
    return new Proc(this.spec)
  }
}

const running = new Set<Proc>()

process.once('exit', () => {
  // The drill ends without its cleanup (a crash): nothing it started may outlive it.
  for (const p of running) { try { process.kill(p.pid, 'SIGKILL') } catch { /* gone */ } }
})

/** Every process started and not yet exited. */
export function runningProcs (): Proc[] {
  return [...running]
}

/** Stops everything still running: SIGTERM to all at once, SIGKILL after `graceMs`. For `d.cleanup(stopAll)`. */
export async function stopAll (graceMs = 8000): Promise<void> {
  await Promise.all([...running].map(async (p) => await p.stop(graceMs)))
}

/** Starts `portcullis <args>` from a spec without waiting (see `ready()`). */
export function startProc (spec: ProcSpec): Proc {
  return new Proc(spec)
}

const url = (port: number): string => `http://127.0.0.1:${port}`

/**
 * The environment every drill process may share: a drill-only key secret, cheap password hashing,
 * short shutdown grace, high login limits (every client is 127.0.0.1), one issuer name. Pass the
 * result (plus DATABASE_URL and timings) to each start function.
 */
export function baseEnv (extra: Record<string, string> = {}): Record<string, string> {
  return {
    PORTCULLIS_KEY_SECRETS: randomBytes(32).toString('base64'),
    PORTCULLIS_DATA_DIR: tempDir(),
    AUTH_ISSUER: 'http://portcullis-drill.invalid',
    AUTH_AUDIENCE: 'portcullis',
    PASSWORD_SCRYPT_N: '1024',
    AUTH_LOGIN_IP_MAX: '1000000',
    AUTH_LOGIN_USER_MAX: '1000000',
    GATEWAY_SHUTDOWN_GRACE: '5s',
    // No drain delay on SIGTERM: no load balancer to wait for, and a drill stops every process at its end.
    AUTH_DRAIN_DELAY: '0',
    SERVICE_DRAIN_DELAY: '0',
    GATEWAY_DRAIN_DELAY: '0',
    LOG_LEVEL: 'info',
    ...extra
  }
}

const temps: string[] = []
process.once('exit', () => { for (const d of temps) rmSync(d, { recursive: true, force: true }) })

/** A temporary folder, removed when the drill exits. */
export function tempDir (): string {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-drill-'))
  temps.push(dir)
  return dir
}

const handedOut = new Set<number>()

/** `n` free ports, none of which this drill was given before (a port given to a process not listening yet looks free). */
export async function drillPorts (n: number): Promise<number[]> {
  for (;;) {
    const ports = await freePorts(n)
    if (ports.every((p) => !handedOut.has(p))) {
      for (const p of ports) handedOut.add(p)
      return ports
    }
  }
}

/** Free ports for `count` auth replicas, to know their URLs before they start (see `startAuth`'s `ports`). */
export async function authPorts (count: number): Promise<Array<{ port: number, adminPort: number }>> {
  const p = await drillPorts(2 * count)
  return Array.from({ length: count }, (_, i) => ({ port: p[2 * i]!, adminPort: p[2 * i + 1]! }))
}

/** The public URL of an auth replica on these ports (its JWKS: `${authUrl(p)}/.well-known/jwks.json`). */
export function authUrl (ports: { port: number }): string {
  return url(ports.port)
}

/** `portcullis auth` on free ports (or `ports`: known in advance, or to restart on the same ones); ready = admin /health/ready (an active key is loaded). */
export async function startAuth (opts: { env: Record<string, string>, name?: string, ports?: { port: number, adminPort: number }, wait?: boolean }): Promise<Proc> {
  const [port, adminPort] = opts.ports !== undefined ? [opts.ports.port, opts.ports.adminPort] : await drillPorts(2) as [number, number]
  const p = startProc({
    name: opts.name ?? 'auth',
    args: ['auth'],
    env: { ...opts.env, AUTH_HOST: '127.0.0.1', AUTH_PORT: String(port), AUTH_ADMIN_PORT: String(adminPort) },
    base: url(port),
    admin: url(adminPort),
    readyUrl: `${url(adminPort)}/health/ready`
  })
  return opts.wait === false ? p : await p.ready()
}

/** The URL of an auth process's JWKS (a Proc, or the ports it will listen on). */
export function jwksUrl (auth: Proc | { port: number }): string {
  return `${auth instanceof Proc ? auth.base : url(auth.port)}/.well-known/jwks.json`
}

/** `portcullis rotation` with its metrics listener on a free port; ready = the first tick succeeded (metrics listener up). */
export async function startRotation (opts: { env: Record<string, string>, name?: string, wait?: boolean }): Promise<Proc> {
  const [port] = await drillPorts(1) as [number]
  const p = startProc({
    name: opts.name ?? 'rotation',
    args: ['rotation'],
    env: { ...opts.env, ROTATION_METRICS_HOST: '127.0.0.1', ROTATION_METRICS_PORT: String(port) },
    base: url(port),
    admin: url(port),
    readyUrl: `${url(port)}/health/live`
  })
  return opts.wait === false ? p : await p.ready()
}

export interface Services { user: Proc, order: Proc, product: Proc }

/**
 * The three example services (`portcullis services user|order|product`), each verifying tokens
 * itself against `env.AUTH_JWKS_URL` (set it; the issuer name is not a reachable URL); ready = GET /health
 * on the public port (200 before the JWKS is fetched; /health/ready on `admin` waits for it).
 */
export async function startServices (opts: { env: Record<string, string>, prefix?: string, wait?: boolean }): Promise<Services> {
  const [u, o, p, ua, oa, pa] = await drillPorts(6) as [number, number, number, number, number, number]
  const env = {
    ...opts.env,
    SERVICE_HOST: '127.0.0.1',
    SERVICE_ADMIN_HOST: '127.0.0.1',
    USER_SERVICE_PORT: String(u),
    ORDER_SERVICE_PORT: String(o),
    PRODUCT_SERVICE_PORT: String(p),
    USER_SERVICE_ADMIN_PORT: String(ua),
    ORDER_SERVICE_ADMIN_PORT: String(oa),
    PRODUCT_SERVICE_ADMIN_PORT: String(pa),
    USER_SERVICE_URL: url(u),
    PRODUCT_SERVICE_URL: url(p),
    ORDER_CATALOG_REFRESH: '0'
  }
  const one = (kind: 'user' | 'order' | 'product', port: number, adminPort: number): Proc => startProc({
    name: `${opts.prefix ?? ''}${kind}`, args: ['services', kind], env, base: url(port), admin: url(adminPort), readyUrl: `${url(port)}/health`
  })
  const s = { user: one('user', u, ua), order: one('order', o, oa), product: one('product', p, pa) }
  if (opts.wait !== false) await Promise.all([s.user.ready(), s.order.ready(), s.product.ready()])
  return s
}

/**
 * A route file (as an object) for the example services behind a gateway: /api/users, /api/orders,
 * /api/products, one issuer whose keys come from `jwksUri`, rate limits high enough for drill load
 * (the counters are on the shared Redis, keyed by each drill user's own `sub`).
 */
export function serviceRoutes (o: { issuer: string, audience?: string, jwksUri: string, services: Services, rateLimitMax?: number }): Record<string, unknown> {
  return {
    issuers: [{ issuer: o.issuer, audience: o.audience ?? 'portcullis', jwksUri: o.jwksUri }],
    rateLimit: { max: o.rateLimitMax ?? 1_000_000, timeWindow: '1m' },
    routes: [
      { name: 'users', prefix: '/api/users', upstream: o.services.user.base, rewritePrefix: '/users' },
      { name: 'orders', prefix: '/api/orders', upstream: o.services.order.base, rewritePrefix: '/orders' },
      { name: 'products', prefix: '/api/products', upstream: o.services.product.base, rewritePrefix: '/products' }
    ]
  }
}

/** `portcullis gateway` with `routes` written to a temporary route file; ready = admin /health/ready (the JWKS was fetched). */
export async function startGateway (opts: { env: Record<string, string>, routes: Record<string, unknown>, name?: string, wait?: boolean }): Promise<Proc> {
  const [port, adminPort] = await drillPorts(2) as [number, number]
  const file = join(tempDir(), 'routes.yaml')
  writeFileSync(file, stringify(opts.routes))
  const p = startProc({
    name: opts.name ?? 'gateway',
    args: ['gateway'],
    env: { GATEWAY_DRAIN_DELAY: '0', ...opts.env, GATEWAY_HOST: '127.0.0.1', GATEWAY_PORT: String(port), GATEWAY_ADMIN_HOST: '127.0.0.1', GATEWAY_ADMIN_PORT: String(adminPort), GATEWAY_CONFIG: file },
    base: url(port),
    admin: url(adminPort),
    readyUrl: `${url(adminPort)}/health/ready`
  })
  return opts.wait === false ? p : await p.ready()
}

/** What of the required backends does not answer, in one sentence, or undefined when all do. */
export async function missingBackends (need: { postgres?: boolean, redis?: boolean } = { postgres: true, redis: true }): Promise<string | undefined> {
  const missing: string[] = []
  if (need.postgres === true) {
    const c = new pg.Client({ connectionString: DRILL_PG_URL, connectionTimeoutMillis: 3000 })
    try {
      await c.connect()
      await c.query('SELECT 1')
    } catch (err) {
      missing.push(`PostgreSQL at ${DRILL_PG_URL} (${(err as Error).message})`)
    } finally {
      await c.end().catch(() => {})
    }
  }
  if (need.redis === true && !(await redisReachable(DRILL_REDIS_URL))) missing.push(`Redis at ${DRILL_REDIS_URL}`)
  return missing.length > 0 ? `required backend unreachable: ${missing.join('; ')}` : undefined
}

/**
 * Records a broken promise naming every required backend that does not answer (drills need them:
 * no skip, CI or not) and returns false; true when all answer. `if (!await requireBackends(d, ...)) return`
 */
export async function requireBackends (d: { check: (ok: boolean, what: string) => void }, need: { postgres?: boolean, redis?: boolean } = { postgres: true, redis: true }): Promise<boolean> {
  const missing = await missingBackends(need)
  d.check(missing === undefined, missing ?? '')
  return missing === undefined
}

export interface DrillDatabase {
  name: string
  /** postgres:// URL of the drill's own database (DATABASE_URL of its processes). */
  url: string
  /** A pooled client on it, for observing the store (closed by `drop`). */
  pool: pg.Pool
  /** Closes the pool and drops the database (WITH (FORCE): connections of killed processes too). */
  drop: () => Promise<void>
}

/** CREATE DATABASE drill_<random> on the shared server. Register `drop` as a cleanup. */
export async function createDatabase (): Promise<DrillDatabase> {
  const name = `drill_${randomBytes(6).toString('hex')}`
  const admin = new pg.Client({ connectionString: DRILL_PG_URL, connectionTimeoutMillis: 5000 })
  await admin.connect()
  try {
    await admin.query(`CREATE DATABASE ${name}`)
  } finally {
    await admin.end()
  }
  const u = new URL(DRILL_PG_URL)
  u.pathname = `/${name}`
  // The processes put their tables in schema portcullis (DATABASE_SCHEMA unset): the observer reads them there.
  const pool = new pg.Pool({ connectionString: u.href, max: 2, options: `-c search_path=${DEFAULT_PG_SCHEMA}` })
  pool.on('error', () => {}) // an idle client dropped by the server must not crash the drill
  let dropped = false
  return {
    name,
    url: u.href,
    pool,
    drop: async () => {
      if (dropped) return
      dropped = true
      await pool.end().catch(() => {})
      const c = new pg.Client({ connectionString: DRILL_PG_URL, connectionTimeoutMillis: 5000 })
      await c.connect()
      try {
        await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
      } finally {
        await c.end()
      }
    }
  }
}

export interface Sample { name: string, labels: Record<string, string>, value: number }

/** The Prometheus samples of a process's admin `/metrics`. */
export async function scrape (p: Proc): Promise<Sample[]> {
  const text = await (await fetch(`${p.admin}/metrics`, { signal: AbortSignal.timeout(5000) })).text()
  const out: Sample[] = []
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line)
    if (m === null) continue
    const labels: Record<string, string> = {}
    for (const l of (m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]!] = l[2]!
    out.push({ name: m[1]!, labels, value: Number(m[3]) })
  }
  return out
}

/** Sum of the samples named `name` whose labels include `labels`. */
export function metricSum (samples: Sample[], name: string, labels: Record<string, string> = {}): number {
  return samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v)).reduce((a, s) => a + s.value, 0)
}
