import createError from '@fastify/error'

export { UpstreamTimeoutError, UpstreamUnavailableError } from '@portcullis/core'

/**
 * Every error the gateway itself answers with. The client always gets one JSON shape,
 * `{ statusCode, code, error, message }`, and never a library message or a stack trace
 * (see `errorHandler` in server.ts).
 */
export const RouteNotFoundError = createError('PORTCULLIS_NOT_FOUND', 'No route matches this path', 404)
export const BadPathError = createError('PORTCULLIS_BAD_PATH', 'Path contains dot segments, backslashes or malformed escapes', 400)
export const CircuitOpenError = createError('PORTCULLIS_CIRCUIT_OPEN', 'Upstream service is failing; try again later', 503)
export const InternalError = createError('PORTCULLIS_INTERNAL', 'Internal gateway error', 500)
export const GatewayOverloadedError = createError('PORTCULLIS_GATEWAY_OVERLOADED', 'The gateway is out of resources; try again later', 503)
export const BadRequestError = createError('PORTCULLIS_BAD_REQUEST', 'Malformed HTTP request', 400)
export const RequestTimeoutError = createError('PORTCULLIS_REQUEST_TIMEOUT', 'The request was not received in time', 408)
export const HeadersTooLargeError = createError('PORTCULLIS_HEADERS_TOO_LARGE', 'Request headers are too large', 431)
export const ShuttingDownError = createError('PORTCULLIS_SHUTTING_DOWN', 'Gateway is shutting down', 503)

/** The JSON body of every error response. */
export interface ErrorBody {
  statusCode: number
  code: string
  error: string
  message: string
}
