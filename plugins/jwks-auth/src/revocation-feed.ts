import { revocationFrom, type RevocationMessage } from '@portcullis/core'
import type { FastifyBaseLogger } from 'fastify'
import { RevocationSet } from './revocations.js'

/** First reconnect delay; doubles up to RECONNECT_MAX_MS. */
const RECONNECT_MIN_MS = 250
const RECONNECT_MAX_MS = 5000
/** No byte for this long (the issuer sends a comment every 5 s) and the connection is dropped and made again. */
const SILENCE_MS = 15_000
/** How often expired entries are forgotten. */
const PRUNE_MS = 10_000

export interface RevocationFeedHooks {
  /** A batch of events was applied (counts, lag). */
  onEvents?: (events: readonly RevocationMessage[], receivedAt: number) => void
  /** The source came up (caught up) or went down. */
  onState?: (live: boolean) => void
  /** A connection attempt failed or a live one was lost. */
  onReconnect?: () => void
  /** A key was revoked: its tokens are refused now; the JWKS can be fetched again. */
  onKeyRevoked?: (kid: string) => void
  /** The set's size after it changed. */
  onSize?: (size: number) => void
}

/**
 * One issuer's revocations as a verifier holds them, whatever brings them (the issuer's feed, Redis):
 * the set, whether it was loaded once (a verifier is ready only then), whether it is live now and
 * since when not, and the forgetting of expired entries. A transport extends it.
 */
export abstract class RevocationSource {
  readonly set = new RevocationSet()
  /** Where the revocations come from (a URL without credentials), for logs. */
  abstract readonly url: string
  #lastId = 0
  #caughtUp = false
  #live = false
  /** Epoch ms since which the source is not live (its start, or the loss); undefined while live. */
  #downSince: number | undefined
  #stopped = false
  #prune: NodeJS.Timeout | undefined
  protected readonly now: () => number
  protected readonly log: FastifyBaseLogger
  protected readonly hooks: RevocationFeedHooks

  constructor (opts: { now: () => number, log: FastifyBaseLogger, hooks?: RevocationFeedHooks }) {
    this.now = opts.now
    this.log = opts.log
    this.hooks = opts.hooks ?? {}
    this.#downSince = opts.now()
  }

  /** Caught up at least once since the start: the set holds every revocation in force. */
  get loaded (): boolean {
    return this.#caughtUp
  }

  get live (): boolean {
    return this.#live
  }

  get stopped (): boolean {
    return this.#stopped
  }

  /** Ms the source has not been live (0 while it is). */
  downFor (now: number): number {
    return this.#downSince === undefined ? 0 : now - this.#downSince
  }

  /** The highest sequence number received. */
  get lastId (): number {
    return this.#lastId
  }

  start (): void {
    if (this.#stopped) return
    this.#prune = setInterval(() => {
      if (this.set.prune(this.now()) > 0) this.hooks.onSize?.(this.set.size)
    }, PRUNE_MS)
    this.#prune.unref()
    this.connect()
  }

  stop (): void {
    this.#stopped = true
    clearInterval(this.#prune)
    this.disconnect()
  }

  /** Starts receiving (called once by start). */
  protected abstract connect (): void
  /** Stops receiving for good. */
  protected abstract disconnect (): void

  /** Every revocation in force was received: live from now on. */
  protected caughtUp (): void {
    this.#caughtUp = true
    this.setLive(true)
  }

  protected setLive (live: boolean): void {
    if (live === this.#live) return
    this.#live = live
    if (live) this.#downSince = undefined
    else this.#downSince = this.now()
    this.hooks.onState?.(live)
  }

  /** Applies revocations (adding one twice changes nothing). */
  protected apply (events: readonly RevocationMessage[]): void {
    if (events.length === 0) return
    const now = this.now()
    let grew = false
    for (const e of events) {
      if (e.seq > this.#lastId) this.#lastId = e.seq
      if (e.expiresAt > now) { this.set.add(e); grew = true }
    }
    if (grew) this.hooks.onSize?.(this.set.size)
    this.hooks.onEvents?.(events, now)
    for (const e of events) if (e.kind === 'kid') this.hooks.onKeyRevoked?.(e.digest)
  }
}

/**
 * Follows one issuer's revocation feed (Server-Sent Events, `event: revocation` with `id` = its
 * sequence number, `event: ready` once caught up): the set is filled from the start, kept current,
 * and after a lost connection resumed from the last id seen (`Last-Event-ID`), so nothing is missed.
 */
export class RevocationFeed extends RevocationSource {
  readonly url: string
  #abort: AbortController | undefined
  #retry: NodeJS.Timeout | undefined
  #delay = RECONNECT_MIN_MS

  constructor (url: string, opts: { now: () => number, log: FastifyBaseLogger, hooks?: RevocationFeedHooks }) {
    super(opts)
    this.url = url
  }

  protected connect (): void {
    void this.#connect()
  }

  protected disconnect (): void {
    clearTimeout(this.#retry)
    this.#abort?.abort()
  }

  #scheduleReconnect (): void {
    if (this.stopped) return
    this.setLive(false)
    this.hooks.onReconnect?.()
    clearTimeout(this.#retry)
    this.#retry = setTimeout(() => { void this.#connect() }, this.#delay)
    this.#retry.unref()
    this.#delay = Math.min(RECONNECT_MAX_MS, this.#delay * 2)
  }

  async #connect (): Promise<void> {
    if (this.stopped) return
    const abort = new AbortController()
    this.#abort = abort
    let silence: NodeJS.Timeout | undefined
    const quiet = (): void => {
      clearTimeout(silence)
      silence = setTimeout(() => { abort.abort() }, SILENCE_MS)
      silence.unref()
    }
    try {
      quiet()
      const res = await fetch(this.url, {
        headers: { accept: 'text/event-stream', ...(this.lastId > 0 ? { 'last-event-id': String(this.lastId) } : {}) },
        redirect: 'error',
        signal: abort.signal
      })
      if (res.status !== 200 || res.body === null) {
        await res.body?.cancel()
        throw new Error(`HTTP ${res.status}`)
      }
      const decoder = new TextDecoder()
      let buf = ''
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
        quiet()
        buf += decoder.decode(chunk, { stream: true })
        let end: number
        while ((end = buf.indexOf('\n\n')) !== -1) {
          const block = buf.slice(0, end)
          buf = buf.slice(end + 2)
          this.#onBlock(block)
        }
      }
      throw new Error('the feed ended')
    } catch (err) {
      if (this.stopped) return
      this.log.warn({ event: 'revocation_feed_lost', url: this.url, lastId: this.lastId, err: (err as Error).message }, 'revocation feed lost: reconnecting')
      this.#scheduleReconnect()
    } finally {
      clearTimeout(silence)
    }
  }

  /** One SSE block: `id:`, `event:`, `data:` lines; comments (`:`) only keep the connection alive. */
  #onBlock (block: string): void {
    let id: string | undefined
    let event = 'message'
    let data = ''
    for (const line of block.split('\n')) {
      if (line === '' || line.startsWith(':')) continue
      const colon = line.indexOf(':')
      const field = colon === -1 ? line : line.slice(0, colon)
      const value = colon === -1 ? '' : line.slice(colon + 1).replace(/^ /, '')
      if (field === 'id') id = value
      else if (field === 'event') event = value
      else if (field === 'data') data = data === '' ? value : `${data}\n${value}`
    }
    if (event === 'ready') {
      this.#delay = RECONNECT_MIN_MS
      this.caughtUp()
      return
    }
    if (event !== 'revocation' || id === undefined || !/^\d+$/.test(id)) return
    const seq = Number(id)
    if (seq <= this.lastId) return
    let e: RevocationMessage | undefined
    try {
      e = revocationFrom({ ...JSON.parse(data) as object, seq })
    } catch {
      return
    }
    if (e !== undefined) this.apply([e])
  }
}
