import Fastify from 'fastify'
import t from 'tap'
import { installErrorHandling } from '../auth/http-errors.js'
import { StoreUnavailableError } from '../store/db-errors.js'

// Every way the store can be unavailable reaches the auth service's error handler as one of these
// (pg's own errors inside a transaction, a raw SQLite error, or the store's StoreUnavailableError):
// each must answer 503 temporarily_unavailable with Retry-After, never 500 server_error.

function coded (code: string, message = `error ${code}`): Error {
  return Object.assign(new Error(message), { code })
}

const unavailable: Array<[string, Error]> = [
  ['connection refused', coded('ECONNREFUSED', 'connect ECONNREFUSED 127.0.0.1:5432')],
  ['connection reset', coded('ECONNRESET', 'read ECONNRESET')],
  ['TCP timeout', coded('ETIMEDOUT')],
  ['broken pipe', coded('EPIPE')],
  ['admin shutdown (the server stops)', coded('57P01', 'terminating connection due to administrator command')],
  ['crash shutdown', coded('57P02')],
  ['the server is starting up or shutting down', coded('57P03', 'the database system is shutting down')],
  ['statement_timeout', coded('57014', 'canceling statement due to statement timeout')],
  ['connection exception', coded('08006', 'connection failure')],
  ['cannot connect', coded('08001')],
  ['too many connections', coded('53300', 'sorry, too many clients already')],
  ['password refused', coded('28P01', 'password authentication failed for user "portcullis"')],
  ['pool acquire or connect timeout', new Error('timeout exceeded when trying to connect')],
  ['new connection timed out', new Error('Connection terminated due to connection timeout')],
  ['socket closed under a query', new Error('Connection terminated unexpectedly')],
  ['frozen server: no answer within query_timeout', new Error('Query read timeout')],
  ['client left unusable', new Error('Client has encountered a connection error and is not queryable')],
  ['the store\'s own error', new StoreUnavailableError('postgres://u:***@db:5432/x', 'no answer within 2000 ms')],
  ['SQLite busy', coded('SQLITE_BUSY', 'database is locked')],
  ['SQLite busy (extended code)', coded('SQLITE_BUSY_SNAPSHOT')],
  ['SQLite table locked', coded('SQLITE_LOCKED')]
]

const ordinary: Array<[string, Error]> = [
  ['syntax error', coded('42601', 'syntax error at or near "SELEC"')],
  ['unique violation', coded('23505', 'duplicate key value violates unique constraint')],
  ['SQLite constraint', coded('SQLITE_CONSTRAINT_UNIQUE')],
  ['SQLite corrupt file', coded('SQLITE_CORRUPT')],
  ['a bug', new TypeError('cannot read properties of undefined')]
]

async function answer (err: Error): Promise<{ status: number, retryAfter: unknown, cacheControl: unknown, body: { error: string, error_description: string } }> {
  const app = Fastify({ logger: false })
  installErrorHandling(app, 4096)
  app.post('/auth/login', async () => { throw err })
  const r = await app.inject({ method: 'POST', url: '/auth/login' })
  await app.close()
  return { status: r.statusCode, retryAfter: r.headers['retry-after'], cacheControl: r.headers['cache-control'], body: r.json() }
}

for (const [what, err] of unavailable) {
  t.test(`store unavailable (${what}): 503 temporarily_unavailable with Retry-After`, async (t) => {
    const r = await answer(err)
    t.equal(r.status, 503)
    t.equal(r.body.error, 'temporarily_unavailable')
    t.equal(r.retryAfter, '1')
    t.equal(r.cacheControl, 'no-store')
    t.notMatch(r.body.error_description, /postgres|5432|SQLITE|locked|timeout/i, 'the body says nothing about the store')
  })
}

for (const [what, err] of ordinary) {
  t.test(`not an outage (${what}): still 500 server_error`, async (t) => {
    const r = await answer(err)
    t.equal(r.status, 500)
    t.equal(r.body.error, 'server_error')
    t.equal(r.retryAfter, undefined)
  })
}
