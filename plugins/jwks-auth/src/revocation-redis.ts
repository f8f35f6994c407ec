import { revocationFrom, revocationRedisNames, type RevocationMessage } from '@portcullis/core'
import type { FastifyBaseLogger } from 'fastify'
import { RevocationSource, type RevocationFeedHooks } from './revocation-feed.js'

/** How often the subscription is checked (PING); no answer within it and it is made again. */
const HEARTBEAT_MS = 5000

/** The part of an ioredis client used here (ioredis is an optional peer dependency, loaded only for a redis:// source). */
interface RedisLike {
  connect: () => Promise<void>
  disconnect: (reconnect?: boolean) => void
  duplicate: () => RedisLike
  subscribe: (channel: string) => Promise<unknown>
  ping: () => Promise<unknown>
  zrangebyscore: (key: string, min: number | string, max: number | string) => Promise<string[]>
  on: (event: string, listener: (...args: never[]) => void) => unknown
  once: (event: string, listener: () => void) => unknown
  off: (event: string, listener: () => void) => unknown
  status: string
}

/** `redis://user:secret@host/0` as `redis://host/0`: what logs may show. */
export function redactedRedisUrl (url: string): string {
  try {
    const u = new URL(url)
    u.username = ''
    u.password = ''
    return u.href
  } catch {
    return 'redis://(invalid URL)'
  }
}

/** One Redis message: a JSON array of revocations. Unreadable elements are skipped. */
function parseBatch (message: string): RevocationMessage[] {
  let v: unknown
  try {
    v = JSON.parse(message)
  } catch {
    return []
  }
  if (!Array.isArray(v)) return []
  const out: RevocationMessage[] = []
  for (const item of v) {
    const e = revocationFrom(item)
    if (e !== undefined) out.push(e)
  }
  return out
}

/**
 * One issuer's revocations through Redis (`redis://` as the issuer's `revocations`): the issuer
 * publishes each batch on the issuer's channel and keeps every revocation in force in a sorted set
 * (@portcullis/core revocationRedisNames). On every (re)subscription the set is read whole, so what
 * was published while this verifier was away is not missed; a PING every 5 s tells a hung Redis from
 * a quiet one. Adding a revocation twice changes nothing, so several publishers (auth replicas) may
 * send the same one.
 */
export class RedisRevocationFeed extends RevocationSource {
  readonly url: string
  readonly #redisUrl: string
  readonly #names: { channel: string, inForce: string }
  #cmd: RedisLike | undefined
  #sub: RedisLike | undefined
  #heartbeat: NodeJS.Timeout | undefined
  /** Bumped on each (re)subscription: a snapshot read for an older one is dropped. */
  #generation = 0

  constructor (redisUrl: string, issuer: string, opts: { now: () => number, log: FastifyBaseLogger, hooks?: RevocationFeedHooks }) {
    super(opts)
    this.#redisUrl = redisUrl
    this.url = redactedRedisUrl(redisUrl)
    this.#names = revocationRedisNames(issuer)
  }

  protected connect (): void {
    void this.#open()
  }

  protected disconnect (): void {
    clearInterval(this.#heartbeat)
    this.#sub?.disconnect()
    this.#cmd?.disconnect()
  }

  async #open (): Promise<void> {
    let mod: { Redis: new (url: string, options: Record<string, unknown>) => RedisLike }
    try {
      mod = await import('ioredis') as unknown as typeof mod
    } catch (err) {
      this.log.error({ event: 'revocation_feed_lost', url: this.url, err: (err as Error).message }, 'revocations from Redis need the ioredis package (npm install ioredis)')
      return
    }
    if (this.stopped) return
    const options = {
      lazyConnect: true,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      connectTimeout: 2000,
      commandTimeout: 2000,
      retryStrategy: (times: number) => Math.min(times * 250, 2000)
    }
    const cmd = new mod.Redis(this.#redisUrl, options)
    const sub = new mod.Redis(this.#redisUrl, { ...options, commandTimeout: undefined })
    this.#cmd = cmd
    this.#sub = sub
    cmd.on('error', () => {})
    sub.on('error', (err: Error) => {
      if (this.live) this.log.warn({ event: 'revocation_feed_lost', url: this.url, lastId: this.lastId, err: err.message }, 'revocation feed lost: reconnecting')
    })
    sub.on('message', (channel: string, message: string) => {
      if (channel === this.#names.channel) this.apply(parseBatch(message))
    })
    sub.on('close', () => { this.#lost() })
    // after every (re)connection: subscribe (again), then read the set in force
    sub.on('ready', () => { void this.#resubscribed() })
    this.#heartbeat = setInterval(() => { void this.#check() }, HEARTBEAT_MS)
    this.#heartbeat.unref()
    cmd.connect().catch(() => {}) // retried by its retryStrategy
    sub.connect().catch(() => {})
  }

  #lost (): void {
    this.#generation++
    if (this.stopped || !this.live) return
    this.setLive(false)
    this.hooks.onReconnect?.()
  }

  async #resubscribed (): Promise<void> {
    const generation = ++this.#generation
    try {
      await this.#sub!.subscribe(this.#names.channel)
      const members = await this.#snapshot()
      if (generation !== this.#generation || this.stopped) return
      this.apply(members)
      this.caughtUp()
    } catch (err) {
      if (this.stopped) return
      this.log.warn({ event: 'revocation_feed_lost', url: this.url, err: (err as Error).message }, 'revocations: Redis could not be read; trying again')
      this.#sub?.disconnect(true)
    }
  }

  /** Every revocation in force (the issuer trims expired ones; they are skipped here too). */
  async #snapshot (): Promise<RevocationMessage[]> {
    const cmd = this.#cmd!
    if (cmd.status !== 'ready') {
      await new Promise<void>((resolve, reject) => {
        const ready = (): void => { clearTimeout(t); resolve() }
        const t = setTimeout(() => { cmd.off('ready', ready); reject(new Error('Redis not reachable')) }, 2000)
        cmd.once('ready', ready)
      })
    }
    const raw = await cmd.zrangebyscore(this.#names.inForce, this.now(), '+inf')
    return parseBatch(`[${raw.join(',')}]`)
  }

  /** A subscription that does not answer PING in time is made again (a hung Redis, a dead peer). */
  async #check (): Promise<void> {
    const sub = this.#sub
    if (sub === undefined || sub.status !== 'ready' || this.stopped) return
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<'timeout'>((resolve) => { timer = setTimeout(() => resolve('timeout'), HEARTBEAT_MS) })
    const r = await Promise.race([sub.ping().catch(() => 'failed'), timeout])
    clearTimeout(timer)
    if ((r === 'timeout' || r === 'failed') && !this.stopped) {
      this.log.warn({ event: 'revocation_feed_lost', url: this.url, lastId: this.lastId, err: `PING ${r}` }, 'revocation feed lost: reconnecting')
      this.#lost()
      sub.disconnect(true)
    }
  }
}
