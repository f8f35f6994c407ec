import createError from '@fastify/error'

/** The store cannot be reached (PostgreSQL refused the connection, the login or the database); names the store, never its password. */
export const StoreUnavailableError = createError<[string, string]>('PORTCULLIS_STORE_UNAVAILABLE', 'cannot reach the PostgreSQL store (DATABASE_URL) %s: %s', 503)

const NETWORK_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ENOTFOUND', 'EAI_AGAIN', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH'])

/**
 * True for failures to reach or log in to PostgreSQL, as opposed to a statement's own error:
 * network errors, SQLSTATE classes 08 (connection) and 28 (authorization), 3D000 (no such
 * database), 57P03 (starting up), 53300 (too many connections), and pg's connect timeout.
 */
export function isConnectionProblem (err: unknown): boolean {
  if (!(err instanceof Error)) return false
  const code = (err as { code?: unknown }).code
  if (typeof code === 'string') {
    return NETWORK_CODES.has(code) || /^(08|28)/.test(code) || code === '3D000' || code === '57P03' || code === '53300'
  }
  return /timeout exceeded when trying to connect|Connection terminated due to connection timeout/.test(err.message)
}
