import fc from 'fast-check'
import t from 'tap'
import type { LightMyRequestResponse } from 'fastify'
import { authFixture } from './helpers/auth-fixture.js'
import { testBackends } from './helpers/backends.js'
import { holds, runs } from './helpers/properties.js'

// Property-based checks of the auth service's request bodies (login, refresh, logout, /oauth/token):
// whatever the body, content type or size, never a 5xx; every refusal is a 4xx with the documented
// `{ error, error_description }` body (auth/http-errors.ts). One service (SQLite store) for every
// case, through app.inject. A short run here; PROPERTY_RUNS raises the cases per property.

const sqlite = (await testBackends()).find((b) => b.name === 'sqlite')!
const backend = await sqlite.open()
// counters high enough that the properties never meet the brute-force limits (429 is allowed anyway)
const f = await authFixture(backend, { env: { AUTH_LOGIN_USER_MAX: '1000000000', AUTH_LOGIN_IP_MAX: '1000000000' } })
t.teardown(async () => { await f.service.close(); await backend.cleanup() })
const app = f.service.app
const USER = { username: 'frank', password: 'frank password' }
await f.users.add(USER)
const CLIENT_ID = 'svc-orders'
const { clientSecret: CLIENT_SECRET } = await f.clients.add({ clientId: CLIENT_ID, scopes: ['orders:read', 'products:read'] })
const BODY_LIMIT = f.config.bodyLimit

const ENDPOINTS = ['/auth/login', '/auth/refresh', '/auth/logout', '/oauth/token'] as const
type Endpoint = typeof ENDPOINTS[number]
/** The `error` member of each refusal, and the statuses it comes with (auth/errors.ts, auth/http-errors.ts). */
const ERROR_STATUS: Record<string, number[]> = {
  invalid_request: [400],
  invalid_credentials: [401],
  invalid_grant: [400, 401],
  invalid_client: [401],
  unsupported_grant_type: [400],
  invalid_scope: [400],
  rate_limited: [429],
  not_found: [404]
}

/** What is wrong with a response, compared with the documented contract; undefined when nothing. */
function wrongWith (res: LightMyRequestResponse, url: string, method: string): string | undefined {
  const endpoint = url.split('?', 1)[0]!
  const status = res.statusCode
  if (status >= 500) return `a ${status}: ${res.body.slice(0, 200)}`
  if (/\bat .+:\d+:\d+|node_modules|stack/i.test(res.body)) return `internals in the body: ${res.body.slice(0, 200)}`
  if (status >= 400) {
    let body: unknown
    try { body = res.json() } catch { return `a ${status} without a JSON body: ${res.body.slice(0, 200)}` }
    const b = body as Record<string, unknown>
    if (body === null || typeof body !== 'object' || Object.keys(b).sort().join() !== 'error,error_description') return `a ${status} with another shape: ${res.body.slice(0, 200)}`
    if (typeof b.error !== 'string' || typeof b.error_description !== 'string' || b.error_description === '') return `a ${status} with members of the wrong type: ${res.body.slice(0, 200)}`
    if (!(ERROR_STATUS[b.error]?.includes(status) ?? false)) return `error ${b.error} with status ${status}`
    if (!String(res.headers['content-type']).startsWith('application/json')) return `content type ${String(res.headers['content-type'])}`
    return undefined
  }
  // success only where the request was well-formed with the right secret (or a logout, always 204)
  if (method !== 'POST') return `a ${status} for ${method}`
  if (endpoint === '/auth/logout') return status === 204 && res.body === '' ? undefined : `logout: ${status} ${res.body.slice(0, 100)}`
  if (status !== 200) return `a ${status} on ${endpoint}`
  const b = res.json() as Record<string, unknown>
  if (typeof b.access_token !== 'string' || b.token_type !== 'Bearer' || typeof b.expires_in !== 'number') return `a 200 without a token: ${res.body.slice(0, 100)}`
  if (res.headers['cache-control'] !== 'no-store') return 'a token response without Cache-Control: no-store'
  return undefined
}

/**
 * One request through inject; undefined when Node itself refuses to carry it (e.g. a header value
 * with a newline: it never reaches the service). Throws when the service logged an error for it
 * (`request failed`: an unexpected failure, whatever status it answered).
 */
async function send (opts: { method?: string, url: string, headers?: Record<string, string>, payload?: string | Buffer }): Promise<LightMyRequestResponse | undefined> {
  f.logs.length = 0
  let res: LightMyRequestResponse
  try {
    res = await app.inject({ method: (opts.method ?? 'POST') as 'POST', url: opts.url, headers: opts.headers ?? {}, ...(opts.payload !== undefined ? { payload: opts.payload } : {}) })
  } catch (err) {
    if ((err as { code?: string }).code === 'ERR_INVALID_CHAR' || (err as { code?: string }).code === 'ERR_INVALID_HTTP_TOKEN') return undefined
    throw err
  }
  const errors = f.logs.filter((l) => typeof l.level === 'number' && l.level >= 50)
  if (errors.length > 0) throw new Error(`logged an error (${res.statusCode}): ${JSON.stringify(errors[0]).slice(0, 300)}`)
  return res
}

/** Strings around each field's bounds (schemas.ts: 1..128, 1..512, 1..1024 characters), and the real secrets now and then. */
const fieldString = fc.oneof(
  { weight: 4, arbitrary: fc.string({ maxLength: 20 }) },
  { weight: 1, arbitrary: fc.string({ unit: 'grapheme', maxLength: 10 }) },
  { weight: 1, arbitrary: fc.constantFrom(0, 1, 63, 64, 65, 127, 128, 129, 255, 256, 257, 511, 512, 513, 1023, 1024, 1025).map((n) => 'x'.repeat(n)) },
  { weight: 1, arbitrary: fc.constantFrom(USER.username, USER.password, 'FRANK', ' frank ', CLIENT_ID, CLIENT_SECRET, 'client_credentials', 'refresh_token', 'password', 'orders:read', 'orders:read products:read', 'admin', '__proto__', '\u0000', '%00', '%zz') }
)
const fieldValue = fc.oneof(
  { weight: 5, arbitrary: fieldString },
  { weight: 1, arbitrary: fc.jsonValue({ maxDepth: 2 }) }
)
const FIELDS = ['username', 'password', 'refresh_token', 'grant_type', 'client_id', 'client_secret', 'scope'] as const
/** JSON bodies: anything, or objects with the endpoints' own members (plus an extra one now and then). */
const jsonBody = fc.oneof(
  { weight: 1, arbitrary: fc.jsonValue({ maxDepth: 3 }) },
  { weight: 4, arbitrary: fc.dictionary(fc.oneof({ weight: 6, arbitrary: fc.constantFrom(...FIELDS) }, { weight: 1, arbitrary: fc.string({ maxLength: 6 }) }), fieldValue, { maxKeys: 5 }) }
)
const endpoint = fc.constantFrom<Endpoint>(...ENDPOINTS)

t.test('any JSON body on login, refresh, logout and /oauth/token: never a 5xx; refusals are 4xx with the documented error body', async (t) => {
  await holds(t, fc.asyncProperty(endpoint, jsonBody, fc.constantFrom('application/json', 'application/json; charset=utf-8', 'Application/JSON'), async (url, body, type) => {
    const res = await send({ url, headers: { 'content-type': type }, payload: JSON.stringify(body) })
    const wrong = res === undefined ? undefined : wrongWith(res, url, 'POST')
    if (wrong !== undefined) throw new Error(wrong)
  }), runs(), { timeout: 10_000 })
})

/** Content types, including ones with parameters, wrong case, vendor types, and nonsense. */
const contentType = fc.oneof(
  fc.constantFrom('application/json', 'application/x-www-form-urlencoded', 'application/x-www-form-urlencoded; charset=utf-8', 'text/plain', 'text/plain; charset=utf-8', 'application/xml',
    'multipart/form-data; boundary=x', 'application/octet-stream', 'application/vnd.api+json', 'application/json; charset=latin1', 'application/jsonx', '*/*', 'json', '', ';', 'application/json;;'),
  fc.string({ maxLength: 30 })
)
/** Payloads of every size around the body limit: text, bytes, JSON and form fragments. */
const payload = fc.oneof(
  fc.string({ maxLength: 300 }),
  fc.uint8Array({ maxLength: 300 }).map((a) => Buffer.from(a)),
  fc.tuple(fc.constantFrom(0, 1, BODY_LIMIT - 1, BODY_LIMIT, BODY_LIMIT + 1, 3 * BODY_LIMIT), fc.constantFrom('x', '{', '[', '=', '&', '%', '"', '\u00e9')).map(([n, c]) => c.repeat(n)),
  jsonBody.map((b) => JSON.stringify(b)),
  jsonBody.map((b) => JSON.stringify(b).slice(0, -1))
)

t.test('any bytes with any content type and size, by any method: never a 5xx; every refusal has the documented error body', async (t) => {
  // the endpoints as written, and with a query string, a trailing slash, another case, an escape.
  // Not a malformed escape in the path (`/auth/login%`): Fastify's router answers it before any
  // hook, in its own shape (FST_ERR_BAD_URL, URL echoed), not the documented one: reported, not
  // fixed here (auth/server.ts sets no frameworkErrors handler; the gateway's does)
  const target = fc.tuple(endpoint, fc.constantFrom('', '', '', '?x=1', '?%zz', '/', '%2f', '%41', 'X')).map(([e, suffix]) => suffix === 'X' ? e.toUpperCase() : `${e}${suffix}`)
  await holds(t, fc.asyncProperty(target, fc.option(contentType, { nil: undefined }), fc.option(payload, { nil: undefined }), fc.constantFrom('POST', 'POST', 'POST', 'GET', 'PUT', 'DELETE', 'OPTIONS', 'PATCH'), async (url, type, body, method) => {
    const res = await send({ method, url, headers: type === undefined ? {} : { 'content-type': type }, ...(body !== undefined && method !== 'GET' ? { payload: body } : {}) })
    const wrong = res === undefined ? undefined : wrongWith(res, url, method)
    if (wrong !== undefined) throw new Error(wrong)
  }), runs(), { timeout: 10_000 })
})

/** `application/x-www-form-urlencoded` bodies: the token request's parameters, repeated, empty, unknown, badly escaped. */
const formBody = fc.array(fc.tuple(
  fc.oneof({ weight: 6, arbitrary: fc.constantFrom(...FIELDS) }, { weight: 1, arbitrary: fc.oneof(fc.string({ maxLength: 6 }), fc.constantFrom('__proto__', 'constructor', 'toString', 'grant_type[]', '')) }),
  fieldString,
  fc.constantFrom('encoded', 'raw')
), { maxLength: 6 }).map((pairs) => pairs.map(([k, v, how]) => how === 'raw' ? `${k}=${v}` : `${encodeURIComponent(k)}=${encodeURIComponent(v)}`).join('&'))
/** HTTP Basic client authentication: right, wrong, badly encoded, or not Basic at all. */
const authorization = fc.option(fc.oneof(
  fc.tuple(fieldString, fieldString).map(([id, secret]) => `Basic ${Buffer.from(`${encodeURIComponent(id)}:${encodeURIComponent(secret)}`).toString('base64')}`),
  fc.constant(`Basic ${Buffer.from(`${CLIENT_ID}:${CLIENT_SECRET}`).toString('base64')}`),
  fc.string({ maxLength: 30 }).map((s) => `Basic ${Buffer.from(s).toString('base64')}`),
  fc.string({ maxLength: 40 }).map((s) => `basic ${s}`),
  fc.string({ maxLength: 40 })
), { nil: undefined })

t.test('/oauth/token form bodies (any parameters, repeated, empty, badly escaped; any Basic header): never a 5xx; refusals are documented', async (t) => {
  await holds(t, fc.asyncProperty(formBody, authorization, async (form, auth) => {
    const res = await send({ url: '/oauth/token', headers: { 'content-type': 'application/x-www-form-urlencoded', ...(auth === undefined ? {} : { authorization: auth }) }, payload: form })
    const wrong = res === undefined ? undefined : wrongWith(res, '/oauth/token', 'POST')
    if (wrong !== undefined) throw new Error(wrong)
  }), runs(), { timeout: 10_000 })
})

t.test('a well-formed request with the right secrets succeeds, the same request with any one secret changed is refused (4xx)', async (t) => {
  const login = await send({ url: '/auth/login', headers: { 'content-type': 'application/json' }, payload: JSON.stringify(USER) })
  t.equal(login?.statusCode, 200, 'the right password logs in')
  const refreshToken = (login!.json() as { refresh_token: string }).refresh_token
  await holds(t, fc.asyncProperty(fc.constantFrom('password', 'client_secret', 'refresh_token'), fc.nat(), fc.string({ minLength: 1, maxLength: 2 }), async (which, at, insert) => {
    const change = (s: string): string => { const i = at % (s.length + 1); return s.slice(0, i) + insert + s.slice(i + 1) }
    let res: LightMyRequestResponse | undefined
    if (which === 'password') {
      const password = change(USER.password)
      fc.pre(password !== USER.password)
      res = await send({ url: '/auth/login', headers: { 'content-type': 'application/json' }, payload: JSON.stringify({ ...USER, password }) })
    } else if (which === 'client_secret') {
      const secret = change(CLIENT_SECRET)
      fc.pre(secret !== CLIENT_SECRET)
      res = await send({ url: '/oauth/token', headers: { 'content-type': 'application/x-www-form-urlencoded' }, payload: new URLSearchParams({ grant_type: 'client_credentials', client_id: CLIENT_ID, client_secret: secret }).toString() })
    } else {
      const token = change(refreshToken)
      fc.pre(token !== refreshToken)
      res = await send({ url: '/auth/refresh', headers: { 'content-type': 'application/json' }, payload: JSON.stringify({ refresh_token: token }) })
    }
    if (res === undefined) return
    if (res.statusCode < 400 || res.statusCode >= 500) throw new Error(`${which} changed: ${res.statusCode} ${res.body.slice(0, 100)}`)
    const wrong = wrongWith(res, '/', 'POST')
    if (wrong !== undefined) throw new Error(wrong)
  }), runs(0.1, 50), { timeout: 10_000 }) // a scrypt hash per login case: a tenth of the cases in the long run
})
