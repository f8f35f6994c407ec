/**
 * What the Portcullis plugin packages share: the verified user's type, the HTTP errors they answer
 * with, the request-id rule, the W3C trace context and a small hook helper. One definition of each, imported by every package.
 */
export type { VerifiedUser } from './user.js'
export {
  FAILURE_REASONS, AuthFailure, httpErrorFor, forbiddenError, isGuessLike,
  InvalidTokenError, DuplicateAuthorizationError, InsufficientScopeError,
  UpstreamUnavailableError, UpstreamTimeoutError, UpstreamFailedError,
  type FailureReason, type HttpError
} from './errors.js'
export { REQUEST_ID_HEADER, REQUEST_ID_PATTERN, isRequestId, requestIdOf } from './request-id.js'
export { hookList } from './hook-list.js'
export {
  TRACEPARENT_HEADER, TRACESTATE_HEADER, TRACE_FLAG_SAMPLED, kTraceContext,
  parseTraceparent, formatTraceparent, validTracestate, newTraceId, newSpanId, traceContextOf,
  type TraceContext, type Traceparent
} from './trace-context.js'
export { REVOCATION_KINDS, formatRevocation, revocationDigest, revocationFrom, revocationRedisNames, type RevocationKind, type RevocationMessage } from './revocation.js'
