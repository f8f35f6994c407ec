import { spawn, type ChildProcess } from 'node:child_process'
import { renameSync, writeFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

/** Starts `portcullis` CLI commands as real child processes, for the rotation and keys tests. */
const CLI = fileURLToPath(new URL('../../cli/portcullis.ts', import.meta.url))
/** `rotation` with a simulated clock (TEST_CLOCK_FILE) and TEST_HOLD_TX_MS: see rotation-test-worker.ts. */
export const ROTATION_TEST_WORKER = fileURLToPath(new URL('./rotation-test-worker.ts', import.meta.url))

export type LogLine = Record<string, unknown> & { event?: string, now?: number, msg?: string }

/** Lifecycle timings (as env) short enough for simulated periods: period 400 s, windows 100 s. */
export const TEST_TIMING_ENV: Record<string, string> = {
  KEY_ROTATION_PERIOD: '400s',
  KEY_PREPUBLISH: '100s',
  KEY_RETIRE_WINDOW: '100s',
  ACCESS_TOKEN_TTL: '60s',
  CLOCK_SKEW: '5s',
  VERIFIER_CACHE_MAX: '30s',
  SIGNER_PROPAGATION: '1s'
}

function childEnv (env: Record<string, string>): Record<string, string> {
  // Only what the child needs: none of the parent's PORTCULLIS_*/DATABASE_* settings leak in.
  return { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...env }
}

/** Writes the simulated clock atomically (a reader never sees a half-written number). */
export function writeClock (path: string, ms: number): void {
  writeFileSync(`${path}.tmp`, String(ms))
  renameSync(`${path}.tmp`, path)
}

export class CliProcess {
  readonly child: ChildProcess
  readonly lines: LogLine[] = []
  stdout = ''
  stderr = ''
  readonly exited: Promise<{ code: number | null, signal: NodeJS.Signals | null }>
  #waiters = new Set<() => void>()
  #done = false

  /** `args` for the `portcullis` CLI, or for `script` (another entry point) when given. */
  constructor (args: string[], env: Record<string, string>, script = CLI) {
    this.child = spawn(process.execPath, ['--import', 'tsx', script, ...args], { env: childEnv(env), stdio: ['ignore', 'pipe', 'pipe'] })
    let buf = ''
    this.child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      this.stdout += d
      buf += d
      let i: number
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i)
        buf = buf.slice(i + 1)
        try {
          this.lines.push(JSON.parse(line) as LogLine)
        } catch {
          // not a log line (human output)
        }
      }
      for (const w of this.#waiters) w()
    })
    this.child.stderr!.setEncoding('utf8').on('data', (d: string) => { this.stderr += d })
    this.exited = new Promise((resolve) => {
      this.child.on('close', (code, signal) => {
        this.#done = true
        for (const w of this.#waiters) w()
        resolve({ code, signal })
      })
    })
  }

  /** Resolves with the first log line (from index `from`) matching `pred`; rejects if the process exits first. */
  waitFor (pred: (l: LogLine) => boolean, what: string, from = 0, timeoutMs = 30_000): Promise<LogLine> {
    return new Promise((resolve, reject) => {
      let at = from
      const check = (): void => {
        for (; at < this.lines.length; at++) {
          if (pred(this.lines[at]!)) { finish(); resolve(this.lines[at]!); return }
        }
        if (this.#done) { finish(); reject(new Error(`worker exited before ${what}; stderr: ${this.stderr.slice(-500)}`)) }
      }
      const timer = setTimeout(() => { finish(); reject(new Error(`timed out waiting for ${what}; stderr: ${this.stderr.slice(-500)}`)) }, timeoutMs)
      const finish = (): void => { clearTimeout(timer); this.#waiters.delete(check) }
      this.#waiters.add(check)
      check()
    })
  }

  kill (sig: NodeJS.Signals): void {
    if (!this.#done) this.child.kill(sig)
  }
}

/** Runs a one-shot CLI command to completion. */
export async function runCli (args: string[], env: Record<string, string>): Promise<{ code: number | null, stdout: string, stderr: string }> {
  const p = new CliProcess(args, env)
  const { code } = await p.exited
  return { code, stdout: p.stdout, stderr: p.stderr }
}
