/**
 * Hostile clients for drills, all on 127.0.0.1 and bounded: a random-kid token flood, requests with
 * malformed headers (raw sockets: the bytes exactly as written), and held connections (silent, idle
 * after one request, or sending their headers one line a second and never finishing them), each
 * reconnected when the server closes it, so the pressure lasts. Every connection's lifetime, from
 * the moment it started waiting to the moment the server closed it, is recorded.
 */
import { execFileSync } from 'node:child_process'
import { connect, type Socket } from 'node:net'
import { randomBytes } from 'node:crypto'
import { performance } from 'node:perf_hooks'
import { Pool } from 'undici'

const b64url = (s: string | Buffer): string => Buffer.from(s).toString('base64url')

/**
 * A token with a fresh random kid each call (never in any JWKS), plausible claims and a random
 * 2048-bit-sized signature: refused as an unknown kid, which costs the verifier a JWKS look-up.
 */
export function randomKidTokens (claims: Record<string, unknown>): () => string {
  const payload = b64url(JSON.stringify(claims))
  const sig = b64url(randomBytes(256))
  return () => `${b64url(JSON.stringify({ alg: 'RS256', typ: 'JWT', kid: randomBytes(12).toString('base64url') }))}.${payload}.${sig}`
}

export interface FloodResult { requests: number, byStatus: Record<string, number> }

/** Holds the loops of `flood` and `malformedLoop` while `paused` is true (checked every 10 ms). */
export interface Gate { paused: boolean }

async function passGate (gate: Gate | undefined, stopped: () => boolean): Promise<void> {
  while (gate?.paused === true && !stopped()) await new Promise((resolve) => setTimeout(resolve, 10))
}

/** `concurrency` loops sending GET `path` with a random-kid token until `stop()` or `durationMs`; held while `gate.paused`. */
export function flood (o: { origin: string, path: string, token: () => string, concurrency: number, durationMs: number, pauseMs?: number, gate?: Gate }): { result: FloodResult, stop: () => void, done: Promise<FloodResult> } {
  const pool = new Pool(o.origin, { connections: o.concurrency, pipelining: 1 })
  const result: FloodResult = { requests: 0, byStatus: {} }
  const deadline = Date.now() + o.durationMs
  let stopped = false
  const loop = async (): Promise<void> => {
    while (!stopped && Date.now() < deadline) {
      await passGate(o.gate, () => stopped)
      if (stopped) break
      result.requests++
      let key: string
      try {
        const res = await pool.request({ path: o.path, method: 'GET', headers: { authorization: `Bearer ${o.token()}` } })
        await res.body.dump()
        key = String(res.statusCode)
      } catch (err) {
        key = `error:${(err as { code?: string }).code ?? 'unknown'}`
      }
      result.byStatus[key] = (result.byStatus[key] ?? 0) + 1
      if (o.pauseMs !== undefined) await new Promise((resolve) => setTimeout(resolve, o.pauseMs))
    }
  }
  const done = Promise.all(Array.from({ length: o.concurrency }, loop)).then(async () => { await pool.close(); return result })
  return { result, stop: () => { stopped = true }, done }
}

/** Raw requests with malformed or hostile headers, each on its own connection (the gateway closes most of them). */
export function malformedRequests (host: string, token: string): Array<{ name: string, raw: string }> {
  const h = `Host: ${host}\r\n`
  return [
    { name: 'not-a-jwt', raw: `GET /api/x HTTP/1.1\r\n${h}Authorization: Bearer not.a.jwt\r\nConnection: close\r\n\r\n` },
    { name: 'two-authorization', raw: `GET /api/x HTTP/1.1\r\n${h}Authorization: Bearer ${token}\r\nAuthorization: Bearer ${token}\r\nConnection: close\r\n\r\n` },
    { name: 'token-too-long', raw: `GET /api/x HTTP/1.1\r\n${h}Authorization: Bearer ${'a'.repeat(9000)}.b.c\r\nConnection: close\r\n\r\n` },
    { name: 'alg-none', raw: `GET /api/x HTTP/1.1\r\n${h}Authorization: Bearer ${b64url('{"alg":"none","kid":"x"}')}.${token.split('.')[1]}.\r\nConnection: close\r\n\r\n` },
    { name: 'basic-scheme', raw: `GET /api/x HTTP/1.1\r\n${h}Authorization: Basic ${b64url('a:b')}\r\nConnection: close\r\n\r\n` },
    { name: 'header-without-colon', raw: `GET /api/x HTTP/1.1\r\n${h}ThisIsNotAHeader\r\nConnection: close\r\n\r\n` },
    { name: 'header-too-large', raw: `GET /api/x HTTP/1.1\r\n${h}X-Big: ${'b'.repeat(20_000)}\r\nConnection: close\r\n\r\n` },
    { name: 'control-char', raw: `GET /api/x HTTP/1.1\r\n${h}X-Evil: a\x01b\r\nConnection: close\r\n\r\n` },
    { name: 'cl-and-te', raw: `POST /api/x HTTP/1.1\r\n${h}Content-Length: 5\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n` },
    { name: 'dot-segments', raw: `GET /api/../api/x HTTP/1.1\r\n${h}Authorization: Bearer ${token}\r\nConnection: close\r\n\r\n` },
    { name: 'bad-method', raw: `G(T /api/x HTTP/1.1\r\n${h}Connection: close\r\n\r\n` },
    { name: 'identity-spoof', raw: `GET /api/x HTTP/1.1\r\n${h}X-User-Id: admin\r\nX-User-Role: admin\r\nConnection: close\r\n\r\n` }
  ]
}

/** Sends `raw` on a new connection; resolves with the status of the first response line (0: none) once the server closed or `timeoutMs` passed. */
export function rawExchange (port: number, raw: string, timeoutMs = 5000): Promise<number> {
  return new Promise((resolve) => {
    let got = ''
    const s = connect({ host: '127.0.0.1', port }, () => { s.write(raw) })
    const timer = setTimeout(() => s.destroy(), timeoutMs)
    s.setEncoding('latin1')
    s.on('data', (d: string) => { if (got.length < 64) got += d })
    s.on('error', () => {})
    s.on('close', () => {
      clearTimeout(timer)
      const m = /^HTTP\/1\.1 (\d{3})/.exec(got)
      resolve(m === null ? 0 : Number(m[1]))
    })
  })
}

/** Loops over `requests` with `concurrency` connections until stopped: status counts per request name. */
export function malformedLoop (o: { port: number, requests: Array<{ name: string, raw: string }>, concurrency: number, durationMs: number, pauseMs?: number, gate?: Gate }): { stop: () => void, done: Promise<Record<string, Record<string, number>>> } {
  const by: Record<string, Record<string, number>> = {}
  const deadline = Date.now() + o.durationMs
  let stopped = false
  let next = 0
  const loop = async (): Promise<void> => {
    while (!stopped && Date.now() < deadline) {
      await passGate(o.gate, () => stopped)
      if (stopped) break
      const r = o.requests[next++ % o.requests.length]!
      const status = await rawExchange(o.port, r.raw)
      const m = (by[r.name] ??= {})
      m[String(status)] = (m[String(status)] ?? 0) + 1
      if (o.pauseMs !== undefined) await new Promise((resolve) => setTimeout(resolve, o.pauseMs))
    }
  }
  return { stop: () => { stopped = true }, done: Promise.all(Array.from({ length: o.concurrency }, loop)).then(() => by) }
}

export type HeldKind = 'silent' | 'idle-after-request' | 'slow-headers'

export interface HeldStats {
  kind: HeldKind
  /** Connections opened in all (reconnections included). */
  opened: number
  /** Connections the server closed: ms from when they started waiting (connected, response received, first header line) to the close. */
  lifetimes: number[]
  /** Status of the server's answer before it closed, if any (`0`: closed without one). */
  answers: Record<string, number>
  /** Connections that failed to connect or got an error. */
  errors: Record<string, number>
  /** Most open at once. */
  peak: number
}

/**
 * Holds `count` connections of one kind to 127.0.0.1:port, opened in batches every 20 ms: 50 a batch,
 * or evenly over `spreadMs` (opened at once, they are closed at once, reopened at once, and the
 * server's work comes in waves a timeout apart; spread, it is as steady as the churn itself);
 * each one the server closes is opened again until `stop()` (which destroys the rest and resolves
 * once every socket is gone). `request` is the raw request an idle-after-request connection sends
 * (it must be kept alive); slow-header connections send a request line, then one header line a second.
 */
export function holdConnections (o: { port: number, count: number, kind: HeldKind, request?: string, path?: string, spreadMs?: number }): { stats: HeldStats, stop: () => Promise<void> } {
  const stats: HeldStats = { kind: o.kind, opened: 0, lifetimes: [], answers: {}, errors: {}, peak: 0 }
  const open = new Set<Socket>()
  const waitingSince = new Map<Socket, number>()
  let stopped = false
  let ticker: NodeJS.Timeout | undefined

  const one = (): void => {
    if (stopped) return
    stats.opened++
    const s = connect({ host: '127.0.0.1', port: o.port })
    open.add(s)
    stats.peak = Math.max(stats.peak, open.size)
    let got = ''
    let answered = false
    s.setEncoding('latin1')
    s.on('connect', () => {
      if (o.kind === 'silent') waitingSince.set(s, performance.now())
      else if (o.kind === 'slow-headers') {
        s.write(`GET ${o.path ?? '/'} HTTP/1.1\r\nHost: drill\r\n`)
        waitingSince.set(s, performance.now())
      } else s.write(o.request ?? `GET ${o.path ?? '/'} HTTP/1.1\r\nHost: drill\r\n\r\n`)
    })
    s.on('data', (d: string) => {
      if (got.length < 4096) got += d
      // idle-after-request: waiting starts once the whole response arrived (Content-Length bodies only)
      if (o.kind === 'idle-after-request' && !answered) {
        const end = got.indexOf('\r\n\r\n')
        const len = /content-length: (\d+)/i.exec(got)
        if (end !== -1 && len !== null) { answered = true; waitingSince.set(s, performance.now()) }
      }
    })
    s.on('error', (err: NodeJS.ErrnoException) => { stats.errors[err.code ?? 'error'] = (stats.errors[err.code ?? 'error'] ?? 0) + 1 })
    s.on('close', () => {
      open.delete(s)
      const since = waitingSince.get(s)
      waitingSince.delete(s)
      if (stopped) return
      if (since !== undefined) stats.lifetimes.push(performance.now() - since)
      const m = /^HTTP\/1\.1 (\d{3})/.exec(got)
      const status = o.kind === 'idle-after-request' ? 'closed-after-200' : (m === null ? '0' : m[1]!)
      stats.answers[status] = (stats.answers[status] ?? 0) + 1
      setTimeout(one, 20) // the pressure lasts
    })
  }
  let opened = 0
  const batch = o.spreadMs === undefined ? 50 : Math.max(1, Math.ceil(o.count * 20 / o.spreadMs))
  const batches = setInterval(() => {
    for (let i = 0; i < batch && opened < o.count; i++, opened++) one()
    if (opened >= o.count) clearInterval(batches)
  }, 20)
  if (o.kind === 'slow-headers') {
    let n = 0
    ticker = setInterval(() => {
      n++
      for (const s of open) if (waitingSince.has(s) && s.writable) s.write(`X-Slow-${n}: x\r\n`)
    }, 1000)
  }
  return {
    stats,
    stop: async () => {
      stopped = true
      clearInterval(batches)
      if (ticker !== undefined) clearInterval(ticker)
      const gone = [...open].map((s) => new Promise<void>((resolve) => { if (s.destroyed && s.closed) resolve(); else { s.once('close', () => resolve()); s.destroy() } }))
      await Promise.all(gone)
    }
  }
}

/**
 * Pins a process and all its threads to `cpus` (taskset -a -p -c): on a 2-core machine the drill runs
 * the measured processes on one core and the attacker on the other, so the attacker's own work does
 * not show as the gateway's loss. Returns false when taskset is unavailable or refused.
 */
export function pinToCpus (pid: number, cpus: string): boolean {
  try {
    execFileSync('taskset', ['-a', '-p', '-c', cpus, String(pid)], { stdio: 'ignore' })
    return true
  } catch {
    return false
  }
}
