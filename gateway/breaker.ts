/**
 * A per-upstream circuit breaker. `closed`: requests flow, consecutive transport failures are
 * counted; at `failureThreshold` it opens. `open`: requests fail fast (503 + Retry-After) until
 * `resetTimeout` has passed. `half-open`: exactly one probe request is let through; its success
 * closes the breaker, its failure opens it again for another `resetTimeout`.
 */
export type BreakerState = 'closed' | 'open' | 'half-open'

export const BREAKER_STATE_VALUE: Record<BreakerState, number> = { closed: 0, open: 1, 'half-open': 2 }

export interface BreakerOptions {
  failureThreshold: number
  /** Seconds the breaker stays open before it lets a probe through. */
  resetTimeout: number
  /** Clock in epoch ms. @defaultValue Date.now */
  now?: () => number
  onStateChange?: (state: BreakerState) => void
}

/** What `tryAcquire` decided: go ahead (`probe` when this request is the half-open probe) or fail fast. */
export type Admission = { allowed: true, probe: boolean } | { allowed: false, retryAfter: number }

export class CircuitBreaker {
  #state: BreakerState = 'closed'
  #failures = 0
  #openedAt = 0
  #probeInFlight = false
  readonly #threshold: number
  readonly #resetMs: number
  readonly #now: () => number
  readonly #onChange: (state: BreakerState) => void

  constructor (opts: BreakerOptions) {
    this.#threshold = opts.failureThreshold
    this.#resetMs = opts.resetTimeout * 1000
    this.#now = opts.now ?? Date.now
    this.#onChange = opts.onStateChange ?? (() => {})
  }

  get state (): BreakerState {
    return this.#state
  }

  tryAcquire (): Admission {
    if (this.#state === 'closed') return { allowed: true, probe: false }
    const elapsed = this.#now() - this.#openedAt
    if (this.#state === 'open' && elapsed >= this.#resetMs) this.#set('half-open')
    if (this.#state === 'half-open' && !this.#probeInFlight) {
      this.#probeInFlight = true
      return { allowed: true, probe: true }
    }
    return { allowed: false, retryAfter: Math.max(1, Math.ceil((this.#resetMs - elapsed) / 1000)) }
  }

  success (): void {
    this.#failures = 0
    this.#probeInFlight = false
    if (this.#state !== 'closed') this.#set('closed')
  }

  failure (): void {
    this.#probeInFlight = false
    if (this.#state === 'half-open') {
      this.#open()
      return
    }
    if (this.#state === 'closed' && ++this.#failures >= this.#threshold) this.#open()
  }

  /** The probe ended without an upstream verdict (client went away): let the next request probe. */
  releaseProbe (): void {
    this.#probeInFlight = false
  }

  #open (): void {
    this.#openedAt = this.#now()
    this.#failures = 0
    this.#set('open')
  }

  #set (state: BreakerState): void {
    this.#state = state
    this.#onChange(state)
  }
}
