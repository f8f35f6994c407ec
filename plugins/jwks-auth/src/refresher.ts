import type { FastifyBaseLogger } from 'fastify'
import type { AuthMetrics } from './metrics.js'
import type { ResolvedIssuer, ResolvedOptions } from './options.js'
import { parseJwks, type KeyEntry } from './keys.js'

/** Largest JWKS body read; a real one is a few KB. */
const MAX_JWKS_BYTES = 256 * 1024

class BodyTooLarge extends Error {}

/** Reads a response body as text, giving up (and cancelling the stream) past `max` bytes. */
async function readLimited (res: Response, max: number): Promise<string> {
  if (res.body === null) return ''
  const reader = res.body.getReader()
  const chunks: Uint8Array[] = []
  let size = 0
  for (;;) {
    const { done, value } = await reader.read()
    if (done) break
    size += value.byteLength
    if (size > max) {
      await reader.cancel().catch(() => {})
      throw new BodyTooLarge()
    }
    chunks.push(value)
  }
  return Buffer.concat(chunks).toString('utf8')
}
/** Removed kids remembered (oldest forgotten first), each for an hour: longer than an access token lives. */
const MAX_REMEMBERED_REMOVED = 1000
const REMOVED_KID_MEMORY_MS = 3600_000
/** First retry delay while an issuer has never been loaded; doubles up to the refresh interval. */
const FIRST_RETRY_MS = 500

export type KeyFreshness = 'fresh' | 'stale' | 'unavailable'
export type MissOutcome = 'found' | 'not_found' | 'unavailable'
export type RefreshResult = 'updated' | 'not_modified' | 'failure'

/** One issuer's key set as the verifier holds it. */
export interface IssuerStatus {
  issuer: string
  jwksUri: string
  /** A full fetch has succeeded at least once. */
  loaded: boolean
  /** Epoch ms of the last successful fetch (200 or 304), null before the first. */
  lastFetchAt: number | null
  /** Seconds since then, null before the first. */
  ageSeconds: number | null
  /** `fresh` within the cache TTL, `stale` while held keys still verify past it, else `unavailable`. */
  freshness: KeyFreshness
  /** Why the last fetch failed; null once one succeeds. */
  lastError: string | null
  /** Kids of the held key set. */
  kids: string[]
}

export interface IssuerKeysDeps {
  options: ResolvedOptions
  metrics: AuthMetrics
  log: FastifyBaseLogger
  /** Called with the kids that left the set (or changed material), so cached verifications are dropped. */
  onRemoved: (issuer: string, kids: string[]) => void
}

/**
 * The key map of one issuer: the single source of truth for which kids verify. Kept current by a
 * background conditional refresh (ETag); unknown kids trigger one conditional fetch of the set per cooldown.
 */
import type { RevocationSource } from './revocation-feed.js'

export class IssuerKeys {
  readonly config: ResolvedIssuer
  keys = new Map<string, KeyEntry>()
  /** The issuer's revocation feed, when it has one (options `issuers[].revocations`). */
  revocations: RevocationSource | undefined
  #deps: IssuerKeysDeps
  #etag: string | undefined
  #lastSuccess = Number.NEGATIVE_INFINITY
  #staleAllowed = true
  #loaded = false
  #failures = 0
  #lastError: string | null = null
  #cooldownUntil = Number.NEGATIVE_INFINITY
  #liftedAt = Number.NEGATIVE_INFINITY
  /** Kids that left the set: their tokens are refused without a fetch, so they cannot burn the kid-miss cooldown. */
  #removed = new Map<string, number>()
  #refreshFlight: Promise<RefreshResult> | null = null
  #timer: NodeJS.Timeout | undefined
  #stopped = false
  /** Aborts an in-flight refresh when the app closes, so close() does not wait for a slow issuer. */
  #closing = new AbortController()

  constructor (config: ResolvedIssuer, deps: IssuerKeysDeps) {
    this.config = config
    this.#deps = deps
  }

  /** True once a full JWKS fetch succeeded. */
  get loaded (): boolean {
    return this.#loaded
  }

  /** What an operator page shows of this issuer (JwksAuthDecorator.status). */
  status (now: number): IssuerStatus {
    const fetched = Number.isFinite(this.#lastSuccess)
    return {
      issuer: this.config.issuer,
      jwksUri: this.config.jwksUri,
      loaded: this.#loaded,
      lastFetchAt: fetched ? this.#lastSuccess : null,
      ageSeconds: fetched ? Math.max(0, (now - this.#lastSuccess) / 1000) : null,
      freshness: this.freshness(now),
      lastError: this.#lastError,
      kids: [...this.keys.keys()]
    }
  }

  /** Whether held keys may verify now: fresh within the cache TTL, then stale (bounded) only after network/5xx failures. */
  freshness (now: number): KeyFreshness {
    const age = now - this.#lastSuccess
    if (age <= this.#deps.options.keyCacheTtlMs) return 'fresh'
    if (this.#staleAllowed && age <= this.#deps.options.keyCacheTtlMs + this.#deps.options.maxStaleAgeMs) return 'stale'
    return 'unavailable'
  }

  /**
   * An unknown kid: at most one fetch in flight, and none during the cooldown after a fetch, so a
   * flood of random kids costs at most one JWKS request per cooldown.
   */
  async resolveMissing (kid: string): Promise<MissOutcome> {
    const removedAt = this.#removed.get(kid)
    if (removedAt !== undefined && this.#deps.options.now() - removedAt < REMOVED_KID_MEMORY_MS) return 'not_found'
    const inFlight = this.#refreshFlight
    if (inFlight !== null) {
      await inFlight
      return this.keys.has(kid) ? 'found' : this.#loaded ? 'not_found' : 'unavailable'
    }
    const now = this.#deps.options.now()
    if (now < this.#cooldownUntil) {
      this.#deps.metrics.refresh.inc({ result: 'kid_cooldown' })
      return this.#loaded || this.keys.size > 0 ? 'not_found' : 'unavailable'
    }
    this.#cooldownUntil = now + this.#deps.options.kidMissCooldownMs
    // The whole set, not just this kid: a fetch triggered by an attacker's random kid must still teach
    // us a legitimate new key in the same document, or a flood timed to each cooldown's end would keep
    // that key refused until the next background refresh. The same parse (size limit, duplicate kids,
    // key limit) and removal rules as the background refresh apply.
    const result = await this.refresh()
    if (this.keys.has(kid)) {
      this.#deps.metrics.refresh.inc({ result: 'kid_found' })
      return 'found'
    }
    if (result === 'failure') return 'unavailable'
    this.#deps.metrics.refresh.inc({ result: 'kid_not_found' })
    return this.#loaded || this.keys.size > 0 ? 'not_found' : 'unavailable'
  }

  /** One conditional fetch of the whole set (single-flight). */
  refresh (): Promise<RefreshResult> {
    this.#refreshFlight ??= this.#refresh().finally(() => { this.#refreshFlight = null })
    return this.#refreshFlight
  }

  async #refresh (): Promise<RefreshResult> {
    const { options, metrics, log } = this.#deps
    const headers: Record<string, string> = { accept: 'application/json' }
    if (this.#etag !== undefined) headers['if-none-match'] = this.#etag
    let res: Response
    let text: string
    try {
      const signal = AbortSignal.any([AbortSignal.timeout(options.fetchTimeoutMs), this.#closing.signal])
      res = await fetch(this.config.jwksUri, { headers, redirect: 'error', signal })
      text = await readLimited(res, MAX_JWKS_BYTES)
    } catch (err) {
      // cut off because the app is closing (say a boot that failed on a port in use): not an issuer problem
      if (this.#closing.signal.aborted) return 'failure'
      if (err instanceof BodyTooLarge) return this.#failed(false, 'JWKS body too large')
      return this.#failed(true, describe(err))
    }
    if (res.status === 304 && this.#etag !== undefined) {
      this.#succeeded()
      metrics.refresh.inc({ result: 'not_modified' })
      return 'not_modified'
    }
    // Stale keys are a bridge over an outage (network, 5xx), not over an issuer that answers wrongly.
    if (res.status >= 500) return this.#failed(true, `HTTP ${res.status}`)
    if (res.status !== 200) return this.#failed(false, `HTTP ${res.status}`)
    let body: unknown
    try {
      body = JSON.parse(text)
    } catch {
      return this.#failed(false, 'JWKS body is not JSON')
    }
    const parsed = parseJwks(body, this.keys)
    if (parsed === null) return this.#failed(false, 'JWKS body has no "keys" array')
    for (const r of parsed.rejected) {
      log.warn({ event: 'jwks_key_rejected', issuer: this.config.issuer, kid: r.kid, why: r.why }, 'JWKS key refused')
    }
    const removed = [...this.keys].filter(([kid, entry]) => parsed.keys.get(kid) !== entry).map(([kid]) => kid)
    // A key change lifts the kid-miss cooldown: while keys change, the issuer's replicas may be a poll
    // apart, and the next unknown kid is likely the next key. Only the issuer can change its set, so a
    // flood of random kids still costs at most one fetch per cooldown.
    // (At most once per cooldown, so replicas that disagree for a poll cannot turn it off.)
    const now = this.#deps.options.now()
    if (this.#loaded && now - this.#liftedAt >= this.#deps.options.kidMissCooldownMs &&
      (removed.length > 0 || [...parsed.keys.keys()].some((kid) => !this.keys.has(kid)))) {
      this.#liftedAt = now
      this.#cooldownUntil = Number.NEGATIVE_INFINITY
    }
    this.keys = parsed.keys
    this.#etag = res.headers.get('etag') ?? undefined
    this.#succeeded()
    this.#loaded = true
    metrics.keys.set({ issuer: this.config.issuer }, this.keys.size)
    for (const kid of this.keys.keys()) this.#removed.delete(kid)
    if (removed.length > 0) {
      for (const kid of removed) {
        if (this.keys.has(kid)) continue // same kid, new material: not gone
        this.#removed.delete(kid)
        this.#removed.set(kid, this.#deps.options.now())
        if (this.#removed.size > MAX_REMEMBERED_REMOVED) this.#removed.delete(this.#removed.keys().next().value as string)
      }
      this.#deps.onRemoved(this.config.issuer, removed)
      log.info({ event: 'jwks_keys_removed', issuer: this.config.issuer, kids: removed }, 'keys left the JWKS')
    }
    metrics.refresh.inc({ result: 'updated' })
    return 'updated'
  }

  #succeeded (): void {
    this.#lastSuccess = this.#deps.options.now()
    this.#lastError = null
    this.#staleAllowed = true
    this.#failures = 0
  }

  #failed (staleAllowed: boolean, why: string): RefreshResult {
    this.#failures++
    this.#lastError = why
    if (!staleAllowed) this.#staleAllowed = false
    this.#deps.metrics.refresh.inc({ result: 'failure' })
    this.#deps.log.warn({ event: 'jwks_fetch_failed', issuer: this.config.issuer, trigger: 'refresh', err: why }, 'JWKS refresh failed')
    return 'failure'
  }

  /** Loads now, then refreshes every interval (faster with backoff until the first success). */
  start (): void {
    if (this.#stopped) return
    const tick = (): void => {
      this.refresh().catch(() => 'failure').finally(() => this.#schedule())
    }
    tick()
  }

  #schedule (): void {
    if (this.#stopped) return
    const interval = this.#deps.options.refreshIntervalMs
    const delay = this.#loaded ? interval : Math.min(interval, FIRST_RETRY_MS * 2 ** Math.min(this.#failures, 10))
    this.#timer = setTimeout(() => {
      this.refresh().catch(() => 'failure').finally(() => this.#schedule())
    }, delay)
    this.#timer.unref()
  }

  stop (): void {
    this.#stopped = true
    clearTimeout(this.#timer)
    this.#closing.abort()
  }
}

function describe (err: unknown): string {
  if (err instanceof Error) {
    const cause = (err as { cause?: { code?: string } }).cause?.code
    return cause === undefined ? `${err.name}: ${err.message}` : `${err.name}: ${cause}`
  }
  return String(err)
}
