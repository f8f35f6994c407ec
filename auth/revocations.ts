import { formatRevocation, revocationFrom, revocationRedisNames } from '@portcullis/core'
import type { Redis } from 'ioredis'
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
  return `id: ${e.seq}\nevent: revocation\ndata: ${formatRevocation(e)}\n\n`
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

/** How often a relay that could not publish tries again (it also tries on every reconnection). */
const RELAY_RETRY_MS = 2000

/**
 * Publishes this issuer's revocations to Redis (REDIS_URL) for verifiers that take them from there
 * (jwks-auth with a `redis://` source): each batch the hub sees is added to the sorted set of
 * revocations in force and published on the channel, in one MULTI, and expired ones are trimmed.
 * On start and after every reconnection it first adds what is in the store but not yet in the set,
 * so a revocation made while Redis (or this relay) was down reaches them too. Several auth replicas
 * may relay the same revocations: verifiers apply each once.
 */
export class RedisRevocationRelay {
  readonly #redis: Redis
  readonly #hub: RevocationHub
  readonly #names: { channel: string, inForce: string }
  readonly #onError: (err: unknown) => void
  readonly #now: () => number
  /** Every revocation up to this seq is in Redis. */
  #published = 0
  #syncing: Promise<void> | undefined
  #dirty = true
  #timer: NodeJS.Timeout | undefined
  #unsubscribe: (() => void) | undefined

  constructor (redis: Redis, hub: RevocationHub, issuer: string, opts: { onError: (err: unknown) => void, now?: () => number }) {
    this.#redis = redis
    this.#hub = hub
    this.#names = revocationRedisNames(issuer)
    this.#onError = opts.onError
    this.#now = opts.now ?? Date.now
  }

  /** Catches Redis up with the store (waits for that when Redis answers), then follows the hub. */
  async start (): Promise<void> {
    this.#unsubscribe = this.#hub.subscribe((events) => { void this.#publish(events) })
    // after a reconnection Redis may have lost what it held (a restart without persistence): what it
    // holds is looked at again, and everything after that is written
    this.#redis.on('ready', () => { this.#published = 0; this.#dirty = true; void this.sync() })
    this.#timer = setInterval(() => { if (this.#dirty) void this.sync() }, RELAY_RETRY_MS)
    this.#timer.unref()
    await this.sync()
  }

  stop (): void {
    clearInterval(this.#timer)
    this.#unsubscribe?.()
  }

  /** Adds to Redis every stored revocation after the last one it is known to hold (one sync at a time). */
  sync (): Promise<void> {
    this.#syncing ??= (async () => {
      try {
        if (this.#redis.status !== 'ready') return
        if (this.#published === 0) {
          // what Redis holds already (another replica, an earlier run): its highest seq
          const top = await this.#redis.zrevrangebyscore(this.#names.inForce, '+inf', this.#now(), 'LIMIT', 0, 1000)
          for (const m of top) {
            const e = revocationFrom(JSON.parse(m))
            if (e !== undefined && e.seq > this.#published) this.#published = e.seq
          }
        }
        for (;;) {
          const events = await this.#hub.store.since(this.#published, PAGE)
          if (events.length > 0) await this.#write(events)
          if (events.length < PAGE) break
        }
        this.#dirty = false
      } catch (err) {
        this.#dirty = true
        this.#onError(err)
      } finally {
        this.#syncing = undefined
      }
    })()
    return this.#syncing
  }

  async #publish (events: readonly RevocationEvent[]): Promise<void> {
    if (this.#dirty) return // the next sync sends them, in order
    try {
      await this.#write(events)
    } catch (err) {
      this.#dirty = true
      this.#onError(err)
    }
  }

  async #write (events: readonly RevocationEvent[]): Promise<void> {
    const members = events.map(formatRevocation)
    const scored = events.flatMap((e, i) => [e.expiresAt, members[i]!])
    const results = await this.#redis.multi()
      .zadd(this.#names.inForce, ...scored)
      .publish(this.#names.channel, `[${members.join(',')}]`)
      .zremrangebyscore(this.#names.inForce, '-inf', this.#now())
      .exec()
    const failed = results?.find(([err]) => err !== null)?.[0]
    if (results === null || failed !== undefined) throw failed ?? new Error('Redis MULTI aborted')
    const last = events[events.length - 1]!.seq
    if (last > this.#published) this.#published = last
  }
}
