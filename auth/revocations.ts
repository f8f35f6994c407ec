import type { FastifyInstance, FastifyReply } from 'fastify'
import type { NewRevocation, RevocationEvent, RevocationStore } from '../store/revocations.js'

/** How often the hub looks for revocations written by other processes (the CLI, other auth replicas). */
export const REVOCATION_POLL_MS = 250
/** The same on PostgreSQL, where a NOTIFY announces each one at commit: a safety net only. */
export const REVOCATION_POLL_LISTENING_MS = 5000
/** A comment line on every open feed this often: verifiers tell a quiet feed from a lost one. */
export const FEED_HEARTBEAT_MS = 5000
/** Revocations sent per catch-up page. */
const PAGE = 5000

type Listener = (events: readonly RevocationEvent[]) => void

/**
 * Publishes revocations to the open feeds. Revocations made by this process are sent as soon as they
 * are committed; those written elsewhere (the CLI, another auth replica on the same PostgreSQL) are
 * picked up by an indexed query every REVOCATION_POLL_MS.
 */
export class RevocationHub {
  readonly store: RevocationStore
  #last = 0
  #listeners = new Set<Listener>()
  #timer: NodeJS.Timeout | undefined
  #polling: Promise<void> | undefined
  #unlisten: (() => Promise<void>) | undefined
  readonly #onError: (err: unknown) => void

  constructor (store: RevocationStore, onError: (err: unknown) => void) {
    this.store = store
    this.#onError = onError
  }

  /**
   * Starts after the revocations already stored (feeds send those from the store). With `listen`
   * (PostgreSQL), each commit's NOTIFY triggers a look at once and the timer is only a safety net.
   */
  async start (listen?: (onNotify: () => void) => Promise<() => Promise<void>>): Promise<void> {
    this.#last = await this.store.lastSeq()
    if (listen !== undefined) {
      try {
        this.#unlisten = await listen(() => { void this.poll() })
      } catch (err) {
        this.#onError(err) // still served by the timer
      }
    }
    this.#timer = setInterval(() => { void this.poll() }, this.#unlisten !== undefined ? REVOCATION_POLL_LISTENING_MS : REVOCATION_POLL_MS)
    this.#timer.unref()
  }

  /** Whether commits are announced (LISTEN/NOTIFY) rather than looked for. */
  get listening (): boolean {
    return this.#unlisten !== undefined
  }

  async stop (): Promise<void> {
    clearInterval(this.#timer)
    this.#listeners.clear()
    await this.#unlisten?.()
  }

  /** Records revocations and publishes them at once. */
  async record (items: readonly NewRevocation[]): Promise<RevocationEvent[]> {
    const events = await this.store.add(items)
    await this.poll()
    return events
  }

  /** Sends what was committed since the last look (one look at a time). */
  poll (): Promise<void> {
    this.#polling ??= (async () => {
      try {
        for (;;) {
          const events = await this.store.since(this.#last, PAGE)
          if (events.length === 0) return
          this.#last = events[events.length - 1]!.seq
          for (const l of this.#listeners) l(events)
          if (events.length < PAGE) return
        }
      } catch (err) {
        this.#onError(err)
      } finally {
        this.#polling = undefined
      }
    })()
    return this.#polling
  }

  subscribe (l: Listener): () => void {
    this.#listeners.add(l)
    return () => { this.#listeners.delete(l) }
  }

  get listeners (): number {
    return this.#listeners.size
  }
}

/** One feed event: `id` is the sequence number a reconnecting verifier sends back as Last-Event-ID. */
function sse (e: RevocationEvent): string {
  return `id: ${e.seq}\nevent: revocation\ndata: {"kind":"${e.kind}","digest":${JSON.stringify(e.digest)},"revokedAt":${e.revokedAt},"expiresAt":${e.expiresAt}}\n\n`
}

/** The position to resume after: `Last-Event-ID` (a reconnect), else `?since=`, else 0 (everything still in force). */
function resumeFrom (header: unknown, query: unknown): number | undefined {
  const v = typeof header === 'string' && header !== '' ? header : typeof query === 'string' ? query : '0'
  return /^\d{1,15}$/.test(v) ? Number(v) : undefined
}

/**
 * `GET /auth/revocations`: Server-Sent Events. First every revocation still in force after the
 * resume position, then an `event: ready` (the verifier is caught up), then each new one as it is
 * made, and a `: ping` comment every 5 s. Public like the JWKS: sessions, users and tokens are
 * digests (store/revocations.ts).
 */
export function revocationFeedRoute (app: FastifyInstance, hub: RevocationHub): void {
  // open feeds end when the app closes (a verifier reconnects to another replica, or to this one after its restart)
  const open = new Set<() => void>()
  app.addHook('preClose', (done) => {
    for (const end of open) end()
    done()
  })
  app.get<{ Querystring: { since?: string } }>('/auth/revocations', { logLevel: 'warn' }, async (req, reply: FastifyReply) => {
    const since = resumeFrom(req.headers['last-event-id'], req.query.since)
    if (since === undefined) {
      return await reply.code(400).send({ statusCode: 400, code: 'PORTCULLIS_BAD_REQUEST', error: 'Bad Request', message: 'Last-Event-ID and since must be whole numbers' })
    }
    reply.hijack()
    const res = reply.raw
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-store',
      'x-accel-buffering': 'no'
    })
    let sent = since
    let live = false
    const held: RevocationEvent[] = []
    const send = (events: readonly RevocationEvent[]): void => {
      let out = ''
      for (const e of events) {
        if (e.seq <= sent) continue
        sent = e.seq
        out += sse(e)
      }
      if (out !== '') res.write(out)
    }
    // subscribed before the catch-up: what is committed meanwhile is held, then sent in order
    const unsubscribe = hub.subscribe((events) => { if (live) send(events); else held.push(...events) })
    const heartbeat = setInterval(() => { res.write(': ping\n\n') }, FEED_HEARTBEAT_MS)
    heartbeat.unref()
    const close = (): void => { clearInterval(heartbeat); unsubscribe(); open.delete(end) }
    const end = (): void => { close(); res.end() }
    open.add(end)
    res.on('close', close)
    try {
      for (;;) {
        const page = await hub.store.since(sent, PAGE)
        send(page)
        if (page.length < PAGE) break
      }
    } catch (err) {
      req.log.error({ err }, 'revocation feed: the store could not be read')
      close()
      res.destroy()
      return
    }
    send(held)
    held.length = 0
    live = true
    res.write(`event: ready\ndata: {"seq":${sent}}\n\n`)
  })
}
