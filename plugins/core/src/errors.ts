import createError from '@fastify/error'

/**
 * Why a request was not authenticated. Logged (`auth_failure`) and counted
 * (`portcullis_auth_requests_total{reason}`), never sent to the client.
 */
export const FAILURE_REASONS = [
  'missing', // no Authorization header
  'malformed', // not `Bearer <token>`, not three base64url segments of JSON objects, bad kid/crit header
  'duplicate_header', // two Authorization headers (400)
  'expired',
  'not_yet_valid', // nbf or iat in the future beyond the clock tolerance
  'bad_signature',
  'unknown_kid',
  'bad_issuer', // iss missing or not in the allowlist
  'bad_audience',
  'alg_not_allowed', // header alg outside the issuer's pinned list, or different from the key's alg
  'invalid_claims', // a required claim missing, or a claim of the wrong type
  'jwks_unavailable', // the issuer's keys could not be fetched and no usable (fresh or bounded-stale) set is held
  'revoked', // valid, but its session, its user (issued before the revocation), the token itself or its key was revoked
  'revocations_unavailable' // the issuer's revocation feed is lost for longer than allowed and the policy is to refuse
] as const
export type FailureReason = typeof FAILURE_REASONS[number]

/** Internal outcome of verification: carries the reason; translated to a 401 at the plugin boundary. */
export class AuthFailure extends Error {
  readonly reason: FailureReason
  constructor (reason: FailureReason, detail?: string) {
    // An expected outcome, thrown for every refused token (thousands a second in a flood): no stack
    // trace is captured (half the cost of a refusal), none is ever logged.
    const limit = Error.stackTraceLimit
    Error.stackTraceLimit = 0
    super(detail ?? reason)
    Error.stackTraceLimit = limit
    this.reason = reason
  }
}

const INVALID_TOKEN_HEADER = 'Bearer error="invalid_token"'
/** No credentials at all: a plain challenge, without an error code (RFC 6750 section 3.1). */
const CHALLENGE_HEADER = 'Bearer'
const INSUFFICIENT_SCOPE_HEADER = 'Bearer error="insufficient_scope"'

/** 401: missing or invalid bearer token. The body is the same for every reason. */
export const InvalidTokenError = createError('PORTCULLIS_AUTH_INVALID_TOKEN', 'Missing or invalid bearer token', 401, Error, false)
/** 400: the request carried more than one Authorization header. */
export const DuplicateAuthorizationError = createError('PORTCULLIS_AUTH_DUPLICATE_HEADER', 'More than one Authorization header', 400, Error, false)
/** 403: authenticated, without the role, permission or scope the route needs. */
export const InsufficientScopeError = createError('PORTCULLIS_AUTH_FORBIDDEN', 'Insufficient permissions', 403, Error, false)

/** An error a hook throws: response headers to send with it, and (401/400) why authentication failed. */
export type HttpError = Error & { headers?: Record<string, string>, reason?: FailureReason }

/**
 * Failure reasons a real holder's token, or a client without one, produces: an expired, not yet
 * valid or revoked token, no token, an issuer whose keys or revocations cannot be fetched. Every other reason means a token
 * that is forged, altered, made up or not meant for this verifier.
 */
const HOLDER_REASONS: ReadonlySet<string> = new Set<FailureReason>(['missing', 'expired', 'not_yet_valid', 'jwks_unavailable', 'revoked', 'revocations_unavailable'])

/**
 * Whether a failed authentication looks like guessing (the rate limiter spends its per-IP failure
 * budget on these only): a 401 whose `reason` is not a holder's (see `HOLDER_REASONS`). A 401 from
 * elsewhere, without a reason, counts.
 */
export function isGuessLike (err: unknown): boolean {
  if ((err as { statusCode?: unknown } | null)?.statusCode !== 401) return false
  const reason = (err as HttpError).reason
  return reason === undefined || !HOLDER_REASONS.has(reason)
}

/**
 * The 401 (or 400) error a hook throws for a failure reason, with its `WWW-Authenticate` header:
 * `Bearer` when the request carried no token, `Bearer error="invalid_token"` when it carried a bad one.
 */
export function httpErrorFor (reason: FailureReason): HttpError {
  if (reason === 'duplicate_header') {
    const err: HttpError = new DuplicateAuthorizationError()
    err.headers = { 'www-authenticate': 'Bearer error="invalid_request"' }
    err.reason = reason
    return err
  }
  const err: HttpError = new InvalidTokenError()
  err.headers = { 'www-authenticate': reason === 'missing' ? CHALLENGE_HEADER : INVALID_TOKEN_HEADER }
  // for the server's own use (rate limiting, logs); error handlers send only code and message
  err.reason = reason
  return err
}

export function forbiddenError (): HttpError {
  const err: HttpError = new InsufficientScopeError()
  err.headers = { 'www-authenticate': INSUFFICIENT_SCOPE_HEADER }
  return err
}

/** 502: the upstream could not be reached (refused, reset, DNS) or broke off. */
export const UpstreamUnavailableError = createError('PORTCULLIS_UPSTREAM_UNAVAILABLE', 'Upstream service unavailable', 502)
/** 504: the upstream did not answer in time. */
export const UpstreamTimeoutError = createError('PORTCULLIS_UPSTREAM_TIMEOUT', 'Upstream service did not answer in time', 504)
/** 502: the upstream answered with a 5xx or a body that could not be read. */
export const UpstreamFailedError = createError('PORTCULLIS_UPSTREAM_FAILED', 'Upstream service failed', 502)
