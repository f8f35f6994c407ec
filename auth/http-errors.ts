import type { FastifyError, FastifyInstance, FastifyRequest } from 'fastify'
import { isStoreUnavailable } from '../store/db-errors.js'
import { OAUTH_ERROR } from './errors.js'

interface ErrorBody { status: number, error: string, description: string }

/** The description of a 503 for a store outage: nothing about the store itself (its address, its error). */
export const STORE_UNAVAILABLE = 'the store is unavailable, retry later'

/**
 * Turns any error into `{ error, error_description }` (RFC 6749 section 5.2). Every malformed request
 * is 400 invalid_request (bad JSON, wrong content type, oversize body, missing or mistyped field),
 * so clients need one error path; our own errors keep their status; a store that cannot serve the
 * request now (PostgreSQL refused, stopped, frozen past the statement timeout, or every pooled
 * connection busy; SQLite locked) is 503 temporarily_unavailable, like any other outage; anything
 * else is a 500 whose body says nothing about the cause.
 */
export function describeError (err: FastifyError, req: FastifyRequest, bodyLimit: number): ErrorBody {
  if (err.validation !== undefined) return { status: 400, error: 'invalid_request', description: err.message }
  if (isStoreUnavailable(err)) return { status: 503, error: 'temporarily_unavailable', description: STORE_UNAVAILABLE }
  const mapped = OAUTH_ERROR[err.code]
  if (mapped !== undefined) return { status: err.statusCode ?? 400, error: mapped, description: err.message }
  switch (err.code) {
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return {
        status: 400,
        error: 'invalid_request',
        description: req.routeOptions.url === '/oauth/token'
          ? 'unsupported content type: send application/x-www-form-urlencoded or application/json'
          : 'unsupported content type: send application/json'
      }
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return { status: 400, error: 'invalid_request', description: `request body is larger than the ${bodyLimit}-byte limit` }
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return { status: 400, error: 'invalid_request', description: 'empty JSON body' }
  }
  const status = err.statusCode ?? 500
  if (status >= 400 && status < 500) {
    // Fastify reports a "__proto__" key (prototype poisoning) as invalid JSON too.
    const description = err.code === 'FST_ERR_CTP_INVALID_JSON_BODY' || err instanceof SyntaxError
      ? 'malformed JSON body'
      : 'malformed request'
    return { status: 400, error: 'invalid_request', description }
  }
  return { status: 500, error: 'server_error', description: 'internal error' }
}

export function installErrorHandling (app: FastifyInstance, bodyLimit: number): void {
  app.setErrorHandler((err: FastifyError, req, reply) => {
    const d = describeError(err, req, bodyLimit)
    if (d.status >= 500 && d.error === 'server_error') req.log.error({ err }, 'request failed')
    // One line per refused request, with the store's own error (its password redacted), no stack.
    else if (d.description === STORE_UNAVAILABLE) req.log.error({ event: 'store_unavailable', code: err.code, reason: err.message }, 'store unavailable: answered 503')
    else req.log.info({ code: err.code, status: d.status, error: d.error }, d.description)
    if (d.status === 503) reply.header('retry-after', '1')
    return reply.code(d.status).header('cache-control', 'no-store').send({ error: d.error, error_description: d.description })
  })
  app.setNotFoundHandler((_req, reply) => reply.code(404).send({ error: 'not_found', error_description: 'no such endpoint' }))
}
