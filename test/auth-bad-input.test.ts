import t from 'tap'
import { authFixture } from './helpers/auth-fixture.js'
import { testBackends } from './helpers/backends.js'

/** Requests that must each be a 400 with `{ error: 'invalid_request', error_description }` and store nothing. */
interface Case { name: string, url: string, headers?: Record<string, string>, payload?: string, describe: RegExp }

const JSON_CT = { 'content-type': 'application/json' }
const FORM_CT = { 'content-type': 'application/x-www-form-urlencoded' }

const cases: Case[] = [
  { name: 'malformed JSON', url: '/auth/login', headers: JSON_CT, payload: '{"username": "a", ', describe: /malformed JSON/ },
  { name: 'JSON that is not an object', url: '/auth/login', headers: JSON_CT, payload: '["a","b"]', describe: /body must be object/ },
  { name: 'empty JSON body', url: '/auth/login', headers: JSON_CT, payload: '', describe: /empty JSON body|body must be object/ },
  { name: 'wrong content type (text/plain)', url: '/auth/login', headers: { 'content-type': 'text/plain' }, payload: 'username=a&password=b', describe: /unsupported content type: send application\/json/ },
  { name: 'form body where only JSON is accepted', url: '/auth/login', headers: FORM_CT, payload: 'username=a&password=b', describe: /unsupported content type/ },
  { name: 'wrong content type on /oauth/token', url: '/oauth/token', headers: { 'content-type': 'application/xml' }, payload: '<x/>', describe: /x-www-form-urlencoded or application\/json/ },
  { name: 'no body at all', url: '/auth/login', describe: /body must be object/ },
  { name: 'oversize body (over AUTH_BODY_LIMIT)', url: '/auth/login', headers: JSON_CT, payload: JSON.stringify({ username: 'a', password: 'x'.repeat(5000) }), describe: /larger than the 4096-byte limit/ },
  { name: 'oversize form body', url: '/oauth/token', headers: FORM_CT, payload: 'grant_type=' + 'x'.repeat(5000), describe: /larger than the 4096-byte limit/ },
  { name: 'missing password', url: '/auth/login', headers: JSON_CT, payload: '{"username":"frank"}', describe: /must have required property 'password'/ },
  { name: 'number instead of string', url: '/auth/login', headers: JSON_CT, payload: '{"username":"frank","password":12345678}', describe: /body\/password must be string/ },
  { name: 'array instead of string', url: '/auth/login', headers: JSON_CT, payload: '{"username":["frank"],"password":"frank password"}', describe: /body\/username must be string/ },
  { name: 'null instead of string', url: '/auth/refresh', headers: JSON_CT, payload: '{"refresh_token":null}', describe: /body\/refresh_token must be string/ },
  { name: 'empty string', url: '/auth/login', headers: JSON_CT, payload: '{"username":"","password":"x"}', describe: /must NOT have fewer than 1 characters/ },
  { name: 'prototype poisoning', url: '/auth/login', headers: JSON_CT, payload: '{"username":"frank","password":"frank password","__proto__":{"role":"admin"}}', describe: /malformed JSON body/ },
  { name: 'number grant_type in JSON', url: '/oauth/token', headers: JSON_CT, payload: '{"grant_type":1}', describe: /grant_type must be string/ }
]

for (const backend of await testBackends()) {
  t.test(backend.name, { skip: backend.skip }, async (t) => {
    const b = await backend.open()
    const f = await authFixture(b, { env: { AUTH_LOGIN_USER_MAX: '1000', AUTH_LOGIN_IP_MAX: '1000' } })
    t.teardown(async () => { await f.service.close(); await b.cleanup() })
    await f.users.add({ username: 'frank', password: 'frank password' })
    const count = async (): Promise<number[]> => Promise.all(['users', 'refresh_tokens', 'refresh_families', 'clients'].map(async (tbl) =>
      Number((await b.db.query<{ n: number }>(`SELECT COUNT(*) AS n FROM ${tbl}`))[0]!.n)))
    const before = await count()

    for (const c of cases) {
      const res = await f.service.app.inject({ method: 'POST', url: c.url, headers: c.headers ?? {}, ...(c.payload !== undefined ? { payload: c.payload } : {}) })
      t.equal(res.statusCode, 400, `${c.name}: 400`)
      const body = res.json()
      t.same(Object.keys(body).sort(), ['error', 'error_description'], `${c.name}: RFC 6749 error body`)
      t.equal(body.error, 'invalid_request', c.name)
      t.match(body.error_description, c.describe, `${c.name}: clear description`)
      t.notMatch(res.body, /\bat .+:\d+|node_modules|stack/i, `${c.name}: no stack trace`)
    }
    t.same(await count(), before, 'nothing stored by any bad request')

    await t.test('errors from inside never leak: a failing store is a bare 500', async (t) => {
      const g = await authFixture(await backend.open().then((x) => { t.teardown(() => x.cleanup()); return x }))
      t.teardown(() => g.service.close())
      await g.users.add({ username: 'gina', password: 'gina password' })
      const orig = g.users.verify.bind(g.users)
      g.users.verify = async () => { throw Object.assign(new Error('relation "users" does not exist at /srv/app.js:12'), { code: '42P01' }) }
      const res = await g.service.app.inject({ method: 'POST', url: '/auth/login', payload: { username: 'gina', password: 'gina password' } })
      g.users.verify = orig
      t.equal(res.statusCode, 500)
      t.same(res.json(), { error: 'server_error', error_description: 'internal error' })
      t.notMatch(res.body, /relation|srv|42P01/)
    })

    await t.test('unknown route: JSON 404', async (t) => {
      const res = await f.service.app.inject({ url: '/nope' })
      t.same([res.statusCode, res.json().error], [404, 'not_found'])
    })
  })
}
