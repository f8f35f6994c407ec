/**
 * The attacker of a drill as a process of its own (so its sockets and loops never share an event
 * loop with the drill's measured load and upstream): `startAttacker(config)` spawns this file,
 * which runs the attacks of drills/lib/hostile.ts against 127.0.0.1 until told to stop (or its
 * `maxMs` passed, or the drill went away), then reports what it saw and exits.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { flood, holdConnections, malformedLoop, malformedRequests, randomKidTokens, type FloodResult, type Gate, type HeldStats } from './hostile.js'

export interface AttackConfig {
  port: number
  /** Random-kid flood: path, claims of the made-up tokens, loops. */
  flood?: { path: string, claims: Record<string, unknown>, concurrency: number, pauseMs: number }
  /** Malformed-header requests (a valid token for the variants that need one). */
  malformed?: { token: string, concurrency: number, pauseMs: number }
  /** Held connections: silent, idle after one request (`idleRequest`), slow headers (to `slowPath`); each kind opened evenly over `spreadMs` when given. */
  held?: { silent: number, idle: number, slow: number, idleRequest: string, slowPath: string, spreadMs?: number }
  /** Stops by itself after this long whatever happens. */
  maxMs: number
  /** Run on this CPU only (taskset), so the attacker's own work does not take the measured processes' CPU. */
  cpu?: number
}

export interface AttackReport {
  flood: FloodResult
  malformed: Record<string, Record<string, number>>
  held: HeldStats[]
  startedAt: number
  stoppedAt: number
}

type Msg = { cmd: 'start', config: AttackConfig } | { cmd: 'stop' } | { cmd: 'pause' } | { cmd: 'resume' }

export interface Attacker {
  child: ChildProcess
  /** Resolves once every held connection was opened at least once (or at once without any). */
  ready: Promise<void>
  /** Holds the flood and the malformed requests (held connections stay); `resume()` lets them go on. */
  pause: () => void
  resume: () => void
  /** Stops every attack, closes every socket; resolves with the report. */
  stop: () => Promise<AttackReport>
}

/** Spawns the attacker process and starts `config`. */
export function startAttacker (config: AttackConfig): Attacker {
  const node = [process.execPath, '--import', 'tsx', fileURLToPath(import.meta.url)]
  const [cmd, ...args] = config.cpu === undefined ? node : ['taskset', '-c', String(config.cpu), ...node]
  const child = spawn(cmd!, args, {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    env: { ...process.env, PORTCULLIS_ATTACKER: '1' }
  })
  let onReady: () => void = () => {}
  const ready = new Promise<void>((resolve) => { onReady = resolve })
  let onReport: (r: AttackReport) => void = () => {}
  let onFail: (e: Error) => void = () => {}
  const report = new Promise<AttackReport>((resolve, reject) => { onReport = resolve; onFail = reject })
  child.on('message', (m: { ready?: true, report?: AttackReport }) => {
    if (m.ready === true) onReady()
    if (m.report !== undefined) onReport(m.report)
  })
  child.on('exit', (code, signal) => { onReady(); onFail(new Error(`the attacker process exited (${code ?? signal}) without a report`)) })
  child.send({ cmd: 'start', config } satisfies Msg)
  return {
    child,
    ready,
    pause: () => { if (child.connected) child.send({ cmd: 'pause' } satisfies Msg) },
    resume: () => { if (child.connected) child.send({ cmd: 'resume' } satisfies Msg) },
    stop: async () => {
      if (child.connected) child.send({ cmd: 'stop' } satisfies Msg)
      const timer = setTimeout(() => child.kill('SIGKILL'), 15_000)
      try {
        return await report
      } finally {
        clearTimeout(timer)
      }
    }
  }
}

async function runAttack (c: AttackConfig, stopped: Promise<void>, gate: Gate): Promise<AttackReport> {
  const startedAt = Date.now()
  const far = c.maxMs
  const f = c.flood === undefined
    ? undefined
    : flood({ origin: `http://127.0.0.1:${c.port}`, path: c.flood.path, token: randomKidTokens(c.flood.claims), concurrency: c.flood.concurrency, durationMs: far, pauseMs: c.flood.pauseMs, gate })
  const m = c.malformed === undefined
    ? undefined
    : malformedLoop({ port: c.port, requests: malformedRequests('drill', c.malformed.token), concurrency: c.malformed.concurrency, durationMs: far, pauseMs: c.malformed.pauseMs, gate })
  const held = c.held === undefined
    ? []
    : [
        holdConnections({ port: c.port, count: c.held.silent, kind: 'silent', spreadMs: c.held.spreadMs }),
        holdConnections({ port: c.port, count: c.held.idle, kind: 'idle-after-request', request: c.held.idleRequest, spreadMs: c.held.spreadMs }),
        holdConnections({ port: c.port, count: c.held.slow, kind: 'slow-headers', path: c.held.slowPath, spreadMs: c.held.spreadMs })
      ]
  // ready once every held connection was opened
  const total = c.held === undefined ? 0 : c.held.silent + c.held.idle + c.held.slow
  void (async () => {
    while (held.reduce((n, h) => n + h.stats.opened, 0) < total) await new Promise((resolve) => setTimeout(resolve, 20))
    process.send?.({ ready: true })
  })()
  await Promise.race([stopped, new Promise((resolve) => setTimeout(resolve, far))])
  f?.stop()
  m?.stop()
  const [floodResult, malformed] = await Promise.all([f?.done ?? { requests: 0, byStatus: {} }, m?.done ?? {}])
  const stoppedAt = Date.now()
  await Promise.all(held.map((h) => h.stop()))
  return { flood: floodResult, malformed, held: held.map((h) => h.stats), startedAt, stoppedAt }
}

if (process.env.PORTCULLIS_ATTACKER === '1' && process.argv[1] === fileURLToPath(import.meta.url)) {
  let stop: () => void = () => {}
  const stopped = new Promise<void>((resolve) => { stop = resolve })
  process.on('disconnect', () => { stop(); setTimeout(() => process.exit(1), 5000).unref() })
  const gate: Gate = { paused: false }
  process.on('message', (msg: Msg) => {
    if (msg.cmd === 'stop') stop()
    if (msg.cmd === 'pause') gate.paused = true
    if (msg.cmd === 'resume') gate.paused = false
    if (msg.cmd === 'start') {
      runAttack(msg.config, stopped, gate).then((report) => {
        process.send?.({ report }, () => { process.disconnect(); process.exit(0) })
      }, (err: Error) => {
        console.error(`attacker: ${err.stack ?? err.message}`)
        process.exit(1)
      })
    }
  })
}
