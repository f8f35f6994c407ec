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
  'jwks_unavailable' // the issuer's keys could not be fetched and no usable (fresh or bounded-stale) set is held
] as const
export type FailureReason = typeof FAILURE_REASONS[number]

/** Internal outcome of verification: carries the reason; translated to a 401 at the plugin boundary. */
export class AuthFailure extends Error {
  readonly reason: FailureReason
  constructor (reason: FailureReason, detail?: string) {
    super(detail ?? reason)
    this.reason = reason
  }
}

const INVALID_TOKEN_HEADER = 'Bearer error="invalid_token"'
/** No credentials at all: a plain challenge, without an error code (RFC 6750 section 3.1). */
const CHALLENGE_HEADER = 'Bearer'
const INSUFFICIENT_SCOPE_HEADER = 'Bearer error="insufficient_scope"'

/** 401: missing or invalid bearer token. The body is the same for every reason. */
export const InvalidTokenError = createError('PORTCULLIS_AUTH_INVALID_TOKEN', 'Missing or invalid bearer token', 401)
/** 400: the request carried more than one Authorization header. */
export const DuplicateAuthorizationError = createError('PORTCULLIS_AUTH_DUPLICATE_HEADER', 'More than one Authorization header', 400)
/** 403: authenticated, without the role, permission or scope the route needs. */
export const InsufficientScopeError = createError('PORTCULLIS_AUTH_FORBIDDEN', 'Insufficient permissions', 403)

export type HttpError = Error & { headers?: Record<string, string> }

/**
 * The 401 (or 400) error a hook throws for a failure reason, with its `WWW-Authenticate` header:
 * `Bearer` when the request carried no token, `Bearer error="invalid_token"` when it carried a bad one.
 */
export function httpErrorFor (reason: FailureReason): HttpError {
  if (reason === 'duplicate_header') {
    const err: HttpError = new DuplicateAuthorizationError()
    err.headers = { 'www-authenticate': 'Bearer error="invalid_request"' }
    return err
  }
  const err: HttpError = new InvalidTokenError()
  err.headers = { 'www-authenticate': reason === 'missing' ? CHALLENGE_HEADER : INVALID_TOKEN_HEADER }
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
