import createError from '@fastify/error'

/**
 * The store cannot be reached or does not answer in time (PostgreSQL refused the connection, the
 * login or the database, went away, or gave no answer within DATABASE_TIMEOUT); names the store,
 * never its password.
 */
export const StoreUnavailableError = createError<[string, string]>('PORTCULLIS_STORE_UNAVAILABLE', 'cannot reach the PostgreSQL store (DATABASE_URL) %s: %s', 503)

const NETWORK_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ENOTFOUND', 'EAI_AGAIN', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'EPIPE', 'ECONNABORTED'])

/**
 * SQLSTATEs that say the server cannot serve us now, rather than that the statement is wrong:
 * 57P01 admin_shutdown (the server stops and ends every session), 57P02 crash_shutdown,
 * 57P03 cannot_connect_now (starting up or shutting down), 57014 query_canceled (a
 * statement_timeout or a cancel by an administrator), 3D000 (no such database).
 */
const UNAVAILABLE_SQLSTATES = new Set(['57P01', '57P02', '57P03', '57014', '3D000'])

/**
 * What pg says, without a code, when the connection is lost or never made: the pool's connect and
 * acquire timeouts (a silent server, or every pooled connection busy), a socket closed under a
 * query, a client left unusable by an earlier failure, and our own per-statement timeout.
 */
const PG_MESSAGES = /timeout exceeded when trying to connect|Connection terminated|Query read timeout|is not queryable|Client has encountered a connection error/

/**
 * True for failures to reach, log in to or hear from PostgreSQL, as opposed to a statement's own
 * error: network errors, SQLSTATE classes 08 (connection exception), 28 (authorization) and 53
 * (insufficient resources: too many connections, out of memory, disk full), the SQLSTATEs above,
 * and pg's connection-loss and timeout errors.
 */
export function isConnectionProblem (err: unknown): boolean {
  if (!(err instanceof Error)) return false
  const code = (err as { code?: unknown }).code
  if (typeof code === 'string') {
    if (NETWORK_CODES.has(code) || /^(08|28|53)/.test(code) || UNAVAILABLE_SQLSTATES.has(code)) return true
  }
  return PG_MESSAGES.test(err.message)
}

/**
 * SQLite's "another connection holds the lock" (SQLITE_BUSY after the busy timeout, SQLITE_LOCKED,
 * and their extended codes): the store is there, but cannot be used now.
 */
function isSqliteBusy (err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code
  return typeof code === 'string' && /^SQLITE_(BUSY|LOCKED)(_|$)/.test(code)
}

/**
 * True when an error means "the store cannot serve this request now, try again later": a
 * StoreUnavailableError, a raw PostgreSQL connection problem (isConnectionProblem), or a busy
 * SQLite file. Services answer these with 503 rather than 500.
 */
export function isStoreUnavailable (err: unknown): boolean {
  if ((err as { code?: unknown } | null)?.code === 'PORTCULLIS_STORE_UNAVAILABLE') return true
  return isConnectionProblem(err) || isSqliteBusy(err)
}
