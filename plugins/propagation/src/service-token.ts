import { request, type Dispatcher } from 'undici'

/** Renew a service token this many seconds before it expires (capped at half its lifetime). */
export const DEFAULT_RENEW_BEFORE_S = 30
export const DEFAULT_TOKEN_TIMEOUT_MS = 5000

/** Where a service gets its own access token for calls made outside a request. */
export interface ServiceTokenSource {
  /** A token valid for a while yet; concurrent callers share one fetch. */
  token(): Promise<string>
  /** Drops `token` from the cache (an upstream refused it), so the next `token()` fetches anew. */
  invalidate(token: string): void
}

export interface ClientCredentialsOptions {
  /** The auth service's token endpoint, e.g. `http://127.0.0.1:3010/oauth/token`. */
  tokenUrl: string
  clientId: string
  clientSecret: string
  /** Space-separated scopes to ask for. @defaultValue none (the client's registered scopes) */
  scope?: string
  /**
   * How the client authenticates (RFC 6749 2.3.1): `basic` (HTTP Basic) or `post` (form fields).
   * @defaultValue 'post'
   */
  clientAuth?: 'basic' | 'post'
  /** Seconds before expiry at which the token is renewed. @defaultValue 30 */
  renewBefore?: number
  /** Deadline of one token request, ms. @defaultValue 5000 */
  timeout?: number
  /** Clock in epoch ms (tests). @defaultValue Date.now */
  now?: () => number
  dispatcher?: Dispatcher
}

interface Cached { token: string, renewAt: number }

/**
 * The client-credentials grant against the auth service, cached until shortly before expiry and
 * renewed single-flight: however many background calls need a token at once, one request is made.
 */
export function clientCredentialsTokenSource (opts: ClientCredentialsOptions): ServiceTokenSource {
  const now = opts.now ?? Date.now
  const renewBefore = opts.renewBefore ?? DEFAULT_RENEW_BEFORE_S
  let cached: Cached | undefined
  let inflight: Promise<string> | undefined

  async function fetchToken (): Promise<string> {
    const form = new URLSearchParams({ grant_type: 'client_credentials' })
    if (opts.scope !== undefined) form.set('scope', opts.scope)
    const headers: Record<string, string> = {
      'content-type': 'application/x-www-form-urlencoded',
      accept: 'application/json'
    }
    if (opts.clientAuth === 'basic') {
      const enc = (s: string): string => encodeURIComponent(s)
      headers.authorization = 'Basic ' + Buffer.from(`${enc(opts.clientId)}:${enc(opts.clientSecret)}`).toString('base64')
    } else {
      form.set('client_id', opts.clientId)
      form.set('client_secret', opts.clientSecret)
    }
    const started = now()
    const timeout = opts.timeout ?? DEFAULT_TOKEN_TIMEOUT_MS
    const res = await request(opts.tokenUrl, {
      method: 'POST',
      headers,
      body: form.toString(),
      headersTimeout: timeout,
      bodyTimeout: timeout,
      signal: AbortSignal.timeout(timeout),
      ...(opts.dispatcher !== undefined ? { dispatcher: opts.dispatcher } : {})
    })
    const text = await res.body.text()
    if (res.statusCode !== 200) throw new Error(`token endpoint answered ${res.statusCode}`)
    let body: { access_token?: unknown, expires_in?: unknown }
    try {
      body = JSON.parse(text) as typeof body
    } catch {
      throw new Error('token endpoint answered with invalid JSON')
    }
    if (typeof body.access_token !== 'string' || body.access_token === '') throw new Error('token endpoint sent no access_token')
    const lifetime = typeof body.expires_in === 'number' && body.expires_in > 0 ? body.expires_in : 60
    // Measured from when we asked, so a slow answer cannot make us keep the token past its expiry.
    const margin = Math.min(renewBefore, lifetime / 2)
    cached = { token: body.access_token, renewAt: started + (lifetime - margin) * 1000 }
    return body.access_token
  }

  return {
    token () {
      if (cached !== undefined && now() < cached.renewAt) return Promise.resolve(cached.token)
      inflight ??= fetchToken().finally(() => { inflight = undefined })
      return inflight
    },
    invalidate (token) {
      if (cached?.token === token) cached = undefined
    }
  }
}
