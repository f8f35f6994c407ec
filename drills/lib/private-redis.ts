/**
 * A private redis-server for a drill: on a free port of 127.0.0.1, no persistence, never the shared
 * Redis at 6379. The drill can kill it, start it again on the same port, hang it (SIGSTOP) and
 * resume it (SIGCONT); `close` always leaves no process behind.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { createConnection } from 'node:net'
import { freePort } from '../../test/helpers/ports.js'

export interface PrivateRedis {
  port: number
  url: string
  /** SIGKILL: connections drop at once, every counter is lost. */
  kill: () => Promise<void>
  /** A new redis-server on the same port (empty), resolved once it answers PING. */
  start: () => Promise<void>
  /** SIGSTOP: connections stay open, nothing is answered. */
  hang: () => void
  /** SIGCONT. */
  resume: () => void
  close: () => Promise<void>
}

export function haveRedisServer (): boolean {
  return spawnSync('redis-server', ['--version']).status === 0
}

/** True when a Redis server answers PING at 127.0.0.1:port within `timeoutMs`. */
export function redisPing (port: number, timeoutMs = 500): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = createConnection({ host: '127.0.0.1', port })
    const done = (ok: boolean): void => { sock.destroy(); resolve(ok) }
    sock.setTimeout(timeoutMs, () => done(false))
    sock.on('error', () => done(false))
    sock.on('connect', () => sock.write('PING\r\n'))
    sock.on('data', (d) => done(d.toString().startsWith('+PONG')))
  })
}

export async function startPrivateRedis (): Promise<PrivateRedis> {
  const port = await freePort()
  let child: ChildProcess | undefined
  let exited: Promise<void> = Promise.resolve()
  let stopped = false

  const start = async (): Promise<void> => {
    const c = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' })
    child = c
    stopped = false
    exited = new Promise<void>((resolve) => c.on('exit', () => resolve()))
    for (let i = 0; i < 200; i++) {
      if (await redisPing(port)) return
      if (c.exitCode !== null) break
      await new Promise((resolve) => setTimeout(resolve, 25))
    }
    throw new Error(`private redis-server on port ${port} did not answer PING`)
  }
  const alive = (): boolean => child !== undefined && child.exitCode === null && child.signalCode === null
  const kill = async (): Promise<void> => {
    if (alive()) {
      if (stopped) child!.kill('SIGCONT')
      child!.kill('SIGKILL')
    }
    await exited
  }
  await start()
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    kill,
    start,
    hang: () => { if (alive()) { child!.kill('SIGSTOP'); stopped = true } },
    resume: () => { if (alive()) { child!.kill('SIGCONT'); stopped = false } },
    close: kill
  }
}
