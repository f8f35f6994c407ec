import { REVOCATION_KINDS, type RevocationKind } from '@portcullis/core'
import type { FastifyBaseLogger } from 'fastify'
import { RevocationSet, type RevocationFeedEvent } from './revocations.js'

/** First reconnect delay; doubles up to RECONNECT_MAX_MS. */
const RECONNECT_MIN_MS = 250
const RECONNECT_MAX_MS = 5000
/** No byte for this long (the issuer sends a comment every 5 s) and the connection is dropped and made again. */
const SILENCE_MS = 15_000
/** How often expired entries are forgotten. */
const PRUNE_MS = 10_000

export interface RevocationFeedHooks {
  /** A batch of events was applied (counts, lag). */
  onEvents?: (events: readonly RevocationFeedEvent[], receivedAt: number) => void
  /** The feed came up (caught up) or went down. */
  onState?: (live: boolean) => void
  /** A connection attempt failed or a live one was lost. */
  onReconnect?: () => void
  /** A key was revoked: its tokens are refused now; the JWKS can be fetched again. */
  onKeyRevoked?: (kid: string) => void
  /** The set's size after it changed. */
  onSize?: (size: number) => void
}

/**
 * Follows one issuer's revocation feed (Server-Sent Events, `event: revocation` with `id` = its
 * sequence number, `event: ready` once caught up): the set is filled from the start, kept current,
 * and after a lost connection resumed from the last id seen (`Last-Event-ID`), so nothing is missed.
 */
export class RevocationFeed {
  readonly set = new RevocationSet()
  readonly url: string
  #lastId = 0
  #caughtUp = false
  #live = false
  /** Epoch ms since which the feed is not live (its start, or the loss); undefined while live. */
  #downSince: number | undefined
  #stopped = false
  #abort: AbortController | undefined
  #retry: NodeJS.Timeout | undefined
  #prune: NodeJS.Timeout | undefined
  #delay = RECONNECT_MIN_MS
  readonly #now: () => number
  readonly #log: FastifyBaseLogger
  readonly #hooks: RevocationFeedHooks

  constructor (url: string, opts: { now: () => number, log: FastifyBaseLogger, hooks?: RevocationFeedHooks }) {
    this.url = url
    this.#now = opts.now
    this.#log = opts.log
    this.#hooks = opts.hooks ?? {}
    this.#downSince = opts.now()
  }

  /** Caught up at least once since the start: the set holds every revocation in force. */
  get loaded (): boolean {
    return this.#caughtUp
  }

  get live (): boolean {
    return this.#live
  }

  /** Ms the feed has not been live (0 while it is). */
  downFor (now: number): number {
    return this.#downSince === undefined ? 0 : now - this.#downSince
  }

  get lastId (): number {
    return this.#lastId
  }

  start (): void {
    if (this.#stopped) return
    this.#prune = setInterval(() => {
      if (this.set.prune(this.#now()) > 0) this.#hooks.onSize?.(this.set.size)
    }, PRUNE_MS)
    this.#prune.unref()
    void this.#connect()
  }

  stop (): void {
    this.#stopped = true
    clearTimeout(this.#retry)
    clearInterval(this.#prune)
    this.#abort?.abort()
  }

  #setLive (live: boolean): void {
    if (live === this.#live) return
    this.#live = live
    if (live) this.#downSince = undefined
    else this.#downSince = this.#now()
    this.#hooks.onState?.(live)
  }

  #scheduleReconnect (): void {
    if (this.#stopped) return
    this.#setLive(false)
    this.#hooks.onReconnect?.()
    clearTimeout(this.#retry)
    this.#retry = setTimeout(() => { void this.#connect() }, this.#delay)
    this.#retry.unref()
    this.#delay = Math.min(RECONNECT_MAX_MS, this.#delay * 2)
  }

  async #connect (): Promise<void> {
    if (this.#stopped) return
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
        headers: { accept: 'text/event-stream', ...(this.#lastId > 0 ? { 'last-event-id': String(this.#lastId) } : {}) },
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
      if (this.#stopped) return
      this.#log.warn({ event: 'revocation_feed_lost', url: this.url, lastId: this.#lastId, err: (err as Error).message }, 'revocation feed lost: reconnecting')
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
      this.#caughtUp = true
      this.#delay = RECONNECT_MIN_MS
      this.#setLive(true)
      return
    }
    if (event !== 'revocation' || id === undefined || !/^\d+$/.test(id)) return
    let e: RevocationFeedEvent
    try {
      const d = JSON.parse(data) as Record<string, unknown>
      if (!(REVOCATION_KINDS as readonly string[]).includes(d.kind as string) || typeof d.digest !== 'string' ||
        typeof d.revokedAt !== 'number' || typeof d.expiresAt !== 'number') return
      e = { kind: d.kind as RevocationKind, digest: d.digest, revokedAt: d.revokedAt, expiresAt: d.expiresAt }
    } catch {
      return
    }
    const seq = Number(id)
    if (seq <= this.#lastId) return
    this.#lastId = seq
    if (e.expiresAt > this.#now()) {
      this.set.add(e)
      this.#hooks.onSize?.(this.set.size)
    }
    this.#hooks.onEvents?.([e], this.#now())
    if (e.kind === 'kid') this.#hooks.onKeyRevoked?.(e.digest)
  }
}
