import { createHash, sign as cryptoSign, type KeyObject } from 'node:crypto'
import type { FastifyBaseLogger } from 'fastify'
import { NoSigningKeyError } from './errors.js'

/** What the signer needs from the key store (store/keys.ts `KeyStore` satisfies it). */
export interface KeySource {
  /** The single active key with its private part, or null. Never a pending, retired or revoked one. */
  activeSigningKey(): Promise<{ kid: string, privateKey: KeyObject, activatedAt: number } | null>
  /** Pending + active + retired public keys. */
  publicJwks(): Promise<{ keys: Array<{ kid: string, kty: string, use?: string, alg?: string, n?: string, e?: string }> }>
}

export interface SignerOptions {
  keys: KeySource
  /** How often the store is re-read, ms. */
  pollInterval: number
  /** Refuse to sign when the last successful read is older than this, ms (SIGNER_PROPAGATION). */
  maxStaleness: number
  log: FastifyBaseLogger
  /** Called after a read that changed the active kid (metrics, tests). */
  onKeyChange?: (kid: string | null) => void
  /** Called when a read of the store fails. */
  onRefreshError?: (err: unknown) => void
  /** Monotonic-enough clock for staleness, ms. @defaultValue Date.now */
  clock?: () => number
}

export interface ServedJwks {
  body: string
  etag: string
  kids: string[]
}

interface ActiveKey { kid: string, privateKey: KeyObject, header: string }

const PUBLIC_MEMBERS = ['kty', 'kid', 'use', 'alg', 'n', 'e'] as const

/**
 * Signs access tokens (RS256, compact JWS) with the store's active key, using the parsed KeyObject
 * directly. The key and the served JWKS are re-read every `pollInterval`, so a newly activated key
 * signs within one interval; if the store cannot be read for `maxStaleness`, signing stops rather
 * than risk using a key that was revoked meanwhile.
 */
export class Signer {
  #opts: SignerOptions
  #clock: () => number
  #active: ActiveKey | null = null
  #jwks: ServedJwks | null = null
  #loadedAt = -Infinity
  #timer: NodeJS.Timeout | undefined
  #inflight: Promise<void> | undefined
  #stopped = false
  #lastError: unknown

  constructor (opts: SignerOptions) {
    this.#opts = opts
    this.#clock = opts.clock ?? Date.now
  }

  /**
   * Reads the store once (failing if it cannot, with the reason in the error's one-line message and
   * nothing logged: the boot reports it), then keeps polling.
   */
  async start (): Promise<void> {
    this.#inflight ??= this.#load(false).finally(() => { this.#inflight = undefined })
    await this.#inflight
    if (this.#loadedAt === -Infinity) {
      // The boot's one-line error says why (a wrong secret, an unreachable store), not only that it failed.
      const why = this.#lastError instanceof Error ? `: ${this.#lastError.message}` : ''
      throw new Error(`signer: could not read the key store${why}`)
    }
    if (this.#stopped) return
    this.#timer = setInterval(() => { this.refresh().catch(() => {}) }, this.#opts.pollInterval)
    this.#timer.unref()
  }

  stop (): void {
    this.#stopped = true
    if (this.#timer !== undefined) clearInterval(this.#timer)
    this.#timer = undefined
  }

  /** Re-reads the active key and the JWKS now (single-flight). Never throws. */
  refresh (): Promise<void> {
    this.#inflight ??= this.#load().finally(() => { this.#inflight = undefined })
    return this.#inflight
  }

  /** One read of the store; a failure is kept as #lastError, counted, and logged when `logFailure`. */
  async #load (logFailure = true): Promise<void> {
    try {
      // Active key first: a key that became active after this read is already in the JWKS read next.
      const active = await this.#opts.keys.activeSigningKey()
      const jwks = await this.#opts.keys.publicJwks()
      const keys = jwks.keys.map((k) => Object.fromEntries(PUBLIC_MEMBERS.filter((m) => k[m] !== undefined).map((m) => [m, k[m]])))
      const body = JSON.stringify({ keys })
      const kids = jwks.keys.map((k) => k.kid)
      this.#jwks = { body, kids, etag: `"${createHash('sha256').update(body).digest('base64url').slice(0, 32)}"` }
      let next: ActiveKey | null = null
      if (active !== null) {
        const problem = unusableKey(active.privateKey)
        if (problem !== undefined) {
          this.#opts.log.error({ kid: active.kid }, `active key refused: ${problem}`)
        } else if (!kids.includes(active.kid)) {
          this.#opts.log.error({ kid: active.kid }, 'active key refused: it is not in the published JWKS')
        } else {
          next = this.#active?.kid === active.kid
            ? this.#active
            : { kid: active.kid, privateKey: active.privateKey, header: b64json({ alg: 'RS256', typ: 'JWT', kid: active.kid }) }
        }
      }
      const changed = (next?.kid ?? null) !== (this.#active?.kid ?? null)
      this.#active = next
      this.#loadedAt = this.#clock()
      if (changed) {
        this.#opts.log.info({ event: 'signing_key_changed', kid: next?.kid ?? null }, next === null ? 'no active signing key' : 'signing with a new key')
        this.#opts.onKeyChange?.(next?.kid ?? null)
      }
    } catch (err) {
      this.#lastError = err
      if (logFailure) this.#opts.log.error({ err }, 'could not read the key store')
      this.#opts.onRefreshError?.(err)
    }
  }

  /** The kid new tokens are signed with, or null when signing is impossible now. */
  get kid (): string | null {
    return this.#usable()?.kid ?? null
  }

  /** True when a token can be signed now. */
  get ready (): boolean {
    return this.#usable() !== null
  }

  /** The JWKS to serve (public members only) with its ETag; null before the first read. */
  get jwks (): ServedJwks | null {
    return this.#jwks
  }

  #usable (): ActiveKey | null {
    if (this.#active === null) return null
    if (this.#clock() - this.#loadedAt > this.#opts.maxStaleness) return null
    return this.#active
  }

  /** A compact RS256 JWS of `claims`; throws NoSigningKeyError (503) when there is no usable key. */
  sign (claims: Record<string, unknown>): { token: string, kid: string } {
    const key = this.#usable()
    if (key === null) throw new NoSigningKeyError()
    const input = `${key.header}.${b64json(claims)}`
    const signature = cryptoSign('sha256', Buffer.from(input), key.privateKey)
    return { token: `${input}.${signature.toString('base64url')}`, kid: key.kid }
  }
}

function b64json (v: unknown): string {
  return Buffer.from(JSON.stringify(v)).toString('base64url')
}

function unusableKey (k: KeyObject): string | undefined {
  if (k.type !== 'private') return 'not a private key'
  if (k.asymmetricKeyType !== 'rsa') return `RS256 needs an RSA key, got ${String(k.asymmetricKeyType)}`
  const bits = k.asymmetricKeyDetails?.modulusLength ?? 0
  if (bits < 2048) return `RSA key of ${bits} bits is under 2048`
  return undefined
}
