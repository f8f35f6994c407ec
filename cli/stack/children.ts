import { spawn, type ChildProcess } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { createInterface } from 'node:readline'
import type { Writable } from 'node:stream'

/** `bin/portcullis.js`: each child runs the same CLI as a user would (from the sources or from dist/). */
export const CLI_BIN = fileURLToPath(new URL(import.meta.url.includes('/dist/cli/') ? '../../../bin/portcullis.js' : '../../bin/portcullis.js', import.meta.url))

export type LogFormat = 'pretty' | 'json'

/**
 * Set on every child of the stack, which has an IPC channel to the stack: when the channel closes (the
 * stack died without stopping its children: SIGKILL, out of memory) the child stops as on SIGTERM
 * instead of living on as an orphan holding its port.
 */
export const STOP_WITH_STACK_ENV = 'PORTCULLIS_STOP_WITH_STACK'

export interface ChildSpec {
  /** Short name used as the log prefix: `auth`, `gateway`, `order`... */
  name: string
  /** CLI arguments after `portcullis`. */
  args: string[]
  env: Record<string, string>
}

export interface RunningChild {
  spec: ChildSpec
  proc: ChildProcess
  /** Resolves with the exit code (or signal name) when the process ends. */
  exited: Promise<{ code: number | null, signal: NodeJS.Signals | null }>
}

const COLORS = [36, 35, 33, 32, 34, 91, 96]
const LEVELS: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' }
const DROP = new Set(['level', 'time', 'pid', 'hostname', 'name', 'msg', 'v'])

/** One pino JSON line as `HH:MM:SS LEVEL msg key=value ...`; other lines unchanged. */
export function prettyLine (line: string): string {
  if (!line.startsWith('{')) return line
  let rec: Record<string, unknown>
  try {
    rec = JSON.parse(line) as Record<string, unknown>
  } catch {
    return line
  }
  const time = typeof rec.time === 'number' ? new Date(rec.time).toISOString().slice(11, 19) : ''
  const level = LEVELS[rec.level as number] ?? String(rec.level ?? '')
  const rest = Object.entries(rec)
    .filter(([k]) => !DROP.has(k))
    .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`)
  return [time, level.padEnd(5), String(rec.msg ?? ''), ...rest].filter((s) => s !== '').join(' ')
}

/** Starts `portcullis <args>` as a child whose every output line is prefixed with its name. */
export function startChild (spec: ChildSpec, index: number, out: Writable, opts: { format: LogFormat, color: boolean, width: number }): RunningChild {
  const proc = spawn(process.execPath, [CLI_BIN, ...spec.args], {
    env: { ...process.env, ...spec.env, [STOP_WITH_STACK_ENV]: '1' },
    stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
    // Its own process group: Ctrl-C at the terminal reaches only the stack, which stops the children
    // in order, instead of every process racing through its own shutdown at once.
    detached: true
  })
  const label = `[${spec.name}]`.padEnd(opts.width + 2)
  const prefix = opts.color ? `\x1b[${COLORS[index % COLORS.length]}m${label}\x1b[0m ` : `${label} `
  for (const stream of [proc.stdout!, proc.stderr!]) { // piped above
    createInterface({ input: stream, crlfDelay: Infinity }).on('line', (line) => {
      out.write(prefix + (opts.format === 'pretty' ? prettyLine(line) : line) + '\n')
    })
  }
  const exited = new Promise<{ code: number | null, signal: NodeJS.Signals | null }>((resolve) => {
    proc.once('exit', (code, signal) => resolve({ code, signal }))
    proc.once('error', () => resolve({ code: 127, signal: null }))
  })
  return { spec, proc, exited }
}

/**
 * Stops the children one after another in the order given (SIGINT, then SIGKILL after `graceMs`),
 * so a caller can stop the gateway before the services it proxies to. Resolves when all are gone.
 * SIGINT, as Ctrl-C would: each finishes its in-flight requests, and none waits out the drain delay
 * it keeps after SIGTERM for a load balancer (AUTH_DRAIN_DELAY, SERVICE_DRAIN_DELAY: 5 s each, 20 s
 * in a row), since nothing balances the stack's processes.
 */
export async function stopChildren (children: RunningChild[], graceMs: number): Promise<void> {
  for (const c of children) {
    if (c.proc.exitCode !== null || c.proc.signalCode !== null) continue
    c.proc.kill('SIGINT')
    const timer = setTimeout(() => c.proc.kill('SIGKILL'), graceMs)
    await c.exited
    clearTimeout(timer)
  }
}

/** Polls `url` until `ok(status)` or `timeoutMs` passes; rejects naming `what` on timeout. */
export async function waitForHttp (url: string, what: string, timeoutMs: number, ok: (status: number, body: string) => boolean = (s) => s === 200, abort?: Promise<unknown>): Promise<void> {
  const deadline = Date.now() + timeoutMs
  let aborted = false
  void abort?.then(() => { aborted = true })
  let last = 'no answer'
  while (Date.now() < deadline) {
    if (aborted) throw new Error(`${what} exited before it was ready`)
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(2000) })
      const body = await res.text()
      if (ok(res.status, body)) return
      last = `HTTP ${res.status}`
    } catch (err) {
      last = err instanceof Error ? err.message : String(err)
    }
    await new Promise((resolve) => setTimeout(resolve, 150))
  }
  throw new Error(`${what} was not ready at ${url} within ${Math.round(timeoutMs / 1000)}s (last: ${last})`)
}
