import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { freePorts } from './ports.js'

export const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url))
const BIN = join(REPO_ROOT, 'bin', 'portcullis.js')

/**
 * Short key timings that still obey the lifecycle rules (docs/design.md), so a test sees rotations
 * within seconds: T=10s, S=1s, C=2s (verifiers refresh the JWKS every 0.5s, cache at most 2s), P=3s
 * (auth re-reads the active key every 0.5s); pre-publish 8s >= C+S+P; retire window 18s >= P+T+S+C;
 * a new key every 9s, the worker ticking every second.
 */
export const SHORT_KEY_TIMINGS: Readonly<Record<string, string>> = Object.freeze({
  ACCESS_TOKEN_TTL: '10s',
  CLOCK_SKEW: '1s',
  VERIFIER_CACHE_MAX: '2s',
  SIGNER_PROPAGATION: '3s',
  KEY_PREPUBLISH: '8s',
  KEY_RETIRE_WINDOW: '18s',
  KEY_ROTATION_PERIOD: '9s',
  ROTATION_SCHEDULE: '* * * * * *',
  AUTH_KEY_POLL_INTERVAL: '500ms',
  JWKS_REFRESH_INTERVAL: '500ms',
  JWKS_CACHE_TTL: '2s'
})

export interface StackPorts {
  AUTH_PORT: number
  AUTH_ADMIN_PORT: number
  GATEWAY_PORT: number
  GATEWAY_ADMIN_PORT: number
  ROTATION_METRICS_PORT: number
  USER_SERVICE_PORT: number
  ORDER_SERVICE_PORT: number
  PRODUCT_SERVICE_PORT: number
  USER_SERVICE_ADMIN_PORT: number
  ORDER_SERVICE_ADMIN_PORT: number
  PRODUCT_SERVICE_ADMIN_PORT: number
}

export interface LogLine { proc: string, rec: Record<string, unknown> }

export interface RunningStack {
  proc: ChildProcess
  env: Record<string, string>
  dataDir: string
  urls: { auth: string, authAdmin: string, gateway: string, gatewayAdmin: string, user: string, order: string, product: string, rotationMetrics: string }
  /** Every stdout/stderr line so far. */
  lines: string[]
  /** Child pids announced by the stack. */
  pids: Map<string, number>
  /** Parsed JSON log lines of the children (STACK_LOG_FORMAT=json). */
  logs(proc?: string): LogLine[]
  /** Resolves once a line matches, or rejects after `ms`. */
  waitFor(re: RegExp, ms?: number): Promise<string>
  /** SIGTERM to the stack; resolves with its exit code. */
  stop(): Promise<number | null>
  /** A signal to the stack process alone (its children are in their own process groups). */
  kill(signal: NodeJS.Signals): void
  exited: Promise<number | null>
}

export async function stackPorts (): Promise<StackPorts> {
  const [a, b, c, d, e, f, g, h, i, j, k] = await freePorts(11) as [number, number, number, number, number, number, number, number, number, number, number]
  return {
    AUTH_PORT: a, AUTH_ADMIN_PORT: b, GATEWAY_PORT: c, GATEWAY_ADMIN_PORT: d, ROTATION_METRICS_PORT: e, USER_SERVICE_PORT: f, ORDER_SERVICE_PORT: g, PRODUCT_SERVICE_PORT: h,
    USER_SERVICE_ADMIN_PORT: i, ORDER_SERVICE_ADMIN_PORT: j, PRODUCT_SERVICE_ADMIN_PORT: k
  }
}

export function tempDataDir (): { dir: string, remove: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-e2e-'))
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) }
}

/**
 * The whole stack in a data folder of its own on free ports, running (`Portcullis is running`);
 * the folder and every process are removed with `t`'s teardown. `env` is added to the stack's.
 */
export async function runningStack (t: { teardown: (fn: () => unknown) => void }, env: Record<string, string> = {}): Promise<{ stack: RunningStack, ports: StackPorts, dataDir: string }> {
  const data = tempDataDir()
  t.teardown(data.remove)
  const ports = await stackPorts()
  const stack = await startStack({ ports, dataDir: data.dir, env, teardown: (fn) => t.teardown(fn) })
  await stack.waitFor(/Portcullis is running/)
  return { stack, ports, dataDir: data.dir }
}

const LINE = /^\[(\w+)\]\s+(\{.*\})$/

/**
 * `portcullis start` as a real process (which starts every other one as its children), with JSON
 * logs captured. `teardown` stops it and kills any child it announced that is still alive.
 */
export async function startStack (opts: { ports: StackPorts, dataDir: string, env?: Record<string, string>, args?: string[], teardown: (fn: () => Promise<void>) => void }): Promise<RunningStack> {
  const p = opts.ports
  const env: Record<string, string> = {
    ...Object.fromEntries(Object.entries(p).map(([k, v]) => [k, String(v)])),
    PORTCULLIS_DATA_DIR: opts.dataDir,
    STACK_LOG_FORMAT: 'json',
    // Cheap password hashing: the same code path, ~1 ms instead of ~100 ms per login.
    PASSWORD_SCRYPT_N: '1024',
    // No drain delay on SIGTERM (test/admin-listeners.test.ts checks it): stopping a stack would wait it once per process.
    AUTH_DRAIN_DELAY: '0',
    SERVICE_DRAIN_DELAY: '0',
    GATEWAY_DRAIN_DELAY: '0',
    ...opts.env
  }
  const proc = spawn(process.execPath, [BIN, 'start', ...(opts.args ?? [])], { cwd: REPO_ROOT, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  const lines: string[] = []
  const pids = new Map<string, number>()
  const waiters: Array<{ re: RegExp, resolve: (l: string) => void }> = []
  const onLine = (line: string): void => {
    lines.push(line)
    const m = /^portcullis start: started (\w+) \(pid (\d+)\)/.exec(line)
    if (m !== null) pids.set(m[1]!, Number(m[2]))
    for (const w of [...waiters]) {
      if (w.re.test(line)) { waiters.splice(waiters.indexOf(w), 1); w.resolve(line) }
    }
    if (process.env.E2E_ECHO === '1') console.error(line)
  }
  for (const s of [proc.stdout!, proc.stderr!]) {
    let buf = ''
    s.setEncoding('utf8')
    s.on('data', (d: string) => {
      buf += d
      let i
      while ((i = buf.indexOf('\n')) >= 0) { onLine(buf.slice(0, i)); buf = buf.slice(i + 1) }
    })
  }
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)))
  const url = (port: number): string => `http://127.0.0.1:${port}`
  const stack: RunningStack = {
    proc,
    env,
    dataDir: opts.dataDir,
    urls: {
      auth: url(p.AUTH_PORT), authAdmin: url(p.AUTH_ADMIN_PORT), gateway: url(p.GATEWAY_PORT), gatewayAdmin: url(p.GATEWAY_ADMIN_PORT),
      user: url(p.USER_SERVICE_PORT), order: url(p.ORDER_SERVICE_PORT), product: url(p.PRODUCT_SERVICE_PORT), rotationMetrics: url(p.ROTATION_METRICS_PORT)
    },
    lines,
    pids,
    logs: (name) => lines.flatMap((l) => {
      const m = LINE.exec(l)
      if (m === null || (name !== undefined && m[1] !== name)) return []
      try {
        return [{ proc: m[1]!, rec: JSON.parse(m[2]!) as Record<string, unknown> }]
      } catch {
        return []
      }
    }),
    waitFor: (re, ms = 90_000) => {
      const hit = lines.find((l) => re.test(l))
      if (hit !== undefined) return Promise.resolve(hit)
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no line matching ${String(re)} within ${ms} ms; last lines:\n${lines.slice(-15).join('\n')}`)), ms)
        waiters.push({ re, resolve: (l) => { clearTimeout(timer); resolve(l) } })
        void exited.then(() => { clearTimeout(timer); reject(new Error(`the stack exited before ${String(re)}; last lines:\n${lines.slice(-25).join('\n')}`)) })
      })
    },
    stop: async () => {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM')
      return await exited
    },
    kill: (signal) => { proc.kill(signal) },
    exited
  }
  opts.teardown(async () => {
    const t = setTimeout(() => proc.kill('SIGKILL'), 20_000)
    await stack.stop()
    clearTimeout(t)
    for (const pid of pids.values()) {
      try { process.kill(pid, 'SIGKILL') } catch { /* already gone */ }
    }
  })
  return stack
}

/** True when no process with this pid exists, or only its zombie (an orphan's exit status that nobody has collected yet). */
export function gone (pid: number): boolean {
  try {
    process.kill(pid, 0)
  } catch {
    return true
  }
  try {
    return readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.startsWith('Z') === true
  } catch {
    return false // it answered kill(pid, 0): alive, wherever /proc is missing
  }
}

/** The JSON payload of a JWT (no verification). */
export function claimsOf (jwt: string): Record<string, unknown> {
  return JSON.parse(Buffer.from(jwt.split('.')[1]!, 'base64url').toString('utf8')) as Record<string, unknown>
}

export function headerOf (jwt: string): Record<string, unknown> {
  return JSON.parse(Buffer.from(jwt.split('.')[0]!, 'base64url').toString('utf8')) as Record<string, unknown>
}

/** A JSON answer as the end-to-end tests read it: status, headers, and the body (`{ text }` when it is not JSON). */
export interface CallResult { status: number, headers: Headers, body: Record<string, unknown> }

/** One HTTP call of a client: an optional bearer token, a JSON body, extra headers. */
export async function call (method: string, url: string, opts: { token?: string, body?: unknown, headers?: Record<string, string> } = {}): Promise<CallResult> {
  const res = await fetch(url, {
    method,
    headers: {
      ...(opts.token !== undefined ? { authorization: `Bearer ${opts.token}` } : {}),
      ...(opts.body !== undefined ? { 'content-type': 'application/json' } : {}),
      ...opts.headers
    },
    ...(opts.body !== undefined ? { body: JSON.stringify(opts.body) } : {})
  })
  const text = await res.text()
  let body: Record<string, unknown> = {}
  try { body = text === '' ? {} : JSON.parse(text) as Record<string, unknown> } catch { body = { text } }
  return { status: res.status, headers: res.headers, body }
}
