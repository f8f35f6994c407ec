import createError from '@fastify/error'

/**
 * Errors of the auth service. Each maps to an RFC 6749 section 5.2 style body
 * `{ error, error_description }` (see `OAUTH_ERROR`); nothing else ever reaches a client.
 */
export const InvalidRequestError = createError<[string]>('PORTCULLIS_AUTH_INVALID_REQUEST', '%s', 400)
export const InvalidCredentialsError = createError('PORTCULLIS_AUTH_INVALID_CREDENTIALS', 'invalid username or password', 401)
/** /auth/refresh and /auth/logout: the refresh token is unknown, expired, revoked or re-used. */
export const InvalidRefreshTokenError = createError('PORTCULLIS_AUTH_INVALID_REFRESH_TOKEN', 'the refresh token is invalid, expired or revoked', 401)
/** /oauth/token: the same, as RFC 6749 puts it. */
export const InvalidGrantError = createError<[string]>('PORTCULLIS_AUTH_INVALID_GRANT', '%s', 400)
export const InvalidClientError = createError('PORTCULLIS_AUTH_INVALID_CLIENT', 'client authentication failed', 401)
export const UnsupportedGrantTypeError = createError<[string]>('PORTCULLIS_AUTH_UNSUPPORTED_GRANT_TYPE', 'grant_type "%s" is not supported', 400)
export const InvalidScopeError = createError<[string]>('PORTCULLIS_AUTH_INVALID_SCOPE', '%s', 400)
export const RateLimitedError = createError('PORTCULLIS_AUTH_RATE_LIMITED', 'too many attempts, retry later', 429)
export const NoSigningKeyError = createError('PORTCULLIS_AUTH_NO_SIGNING_KEY', 'no signing key is available, retry later', 503)
export const LimiterUnavailableError = createError('PORTCULLIS_AUTH_LIMITER_UNAVAILABLE', 'login is unavailable, retry later', 503)

/** Error code -> the `error` member of the response body. */
export const OAUTH_ERROR: Record<string, string> = {
  PORTCULLIS_AUTH_INVALID_REQUEST: 'invalid_request',
  PORTCULLIS_AUTH_INVALID_CREDENTIALS: 'invalid_credentials',
  PORTCULLIS_AUTH_INVALID_REFRESH_TOKEN: 'invalid_grant',
  PORTCULLIS_AUTH_INVALID_GRANT: 'invalid_grant',
  PORTCULLIS_AUTH_INVALID_CLIENT: 'invalid_client',
  PORTCULLIS_AUTH_UNSUPPORTED_GRANT_TYPE: 'unsupported_grant_type',
  PORTCULLIS_AUTH_INVALID_SCOPE: 'invalid_scope',
  PORTCULLIS_AUTH_RATE_LIMITED: 'rate_limited',
  PORTCULLIS_AUTH_NO_SIGNING_KEY: 'temporarily_unavailable',
  PORTCULLIS_AUTH_LIMITER_UNAVAILABLE: 'temporarily_unavailable'
}
