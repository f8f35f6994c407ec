import createError from '@fastify/error'

export { UpstreamTimeoutError, UpstreamUnavailableError } from '@portcullis/core'

/**
 * Every error the gateway itself answers with. The client always gets one JSON shape,
 * `{ statusCode, code, error, message }`, and never a library message or a stack trace
 * (see `errorHandler` in server.ts). Expected refusals capture no stack trace (`false`, the last
 * argument): none is ever logged, and under a flood of bad requests the capture was a tenth of the
 * gateway's CPU time; only the 500 keeps one.
 */
export const RouteNotFoundError = createError('PORTCULLIS_NOT_FOUND', 'No route matches this path', 404, Error, false)
export const BadPathError = createError('PORTCULLIS_BAD_PATH', 'Path contains dot segments, backslashes or malformed escapes', 400, Error, false)
export const CircuitOpenError = createError('PORTCULLIS_CIRCUIT_OPEN', 'Upstream service is failing; try again later', 503, Error, false)
export const InternalError = createError('PORTCULLIS_INTERNAL', 'Internal gateway error', 500)
export const GatewayOverloadedError = createError('PORTCULLIS_GATEWAY_OVERLOADED', 'The gateway is out of resources; try again later', 503, Error, false)
export const BadRequestError = createError('PORTCULLIS_BAD_REQUEST', 'Malformed HTTP request', 400, Error, false)
export const RequestTimeoutError = createError('PORTCULLIS_REQUEST_TIMEOUT', 'The request was not received in time', 408, Error, false)
export const HeadersTooLargeError = createError('PORTCULLIS_HEADERS_TOO_LARGE', 'Request headers are too large', 431, Error, false)
export const ShuttingDownError = createError('PORTCULLIS_SHUTTING_DOWN', 'Gateway is shutting down', 503, Error, false)

/** The JSON body of every error response. */
export interface ErrorBody {
  statusCode: number
  code: string
  error: string
  message: string
}
