import t from 'tap'
import Fastify from 'fastify'
import metrics, { collectProcessMetrics, GAUGES_NAMED_TOTAL, promClient } from '@portcullis/metrics'
import jwksAuth, { FAILURE_REASONS } from '@portcullis/jwks-auth'
import { buildGateway } from '../gateway/server.js'
import { parseGatewayConfig } from '../gateway/config.js'
import { UPSTREAM_ERROR_KINDS } from '../gateway/upstream.js'
import { LOGIN_FAILURES } from '../auth/metrics.js'
import { authFixture } from './helpers/auth-fixture.js'
import { testBackends } from './helpers/backends.js'
import { freePorts } from './helpers/ports.js'
import { echoUpstream, rawRequest } from './helpers/upstream.js'
import { startTestIssuer } from './helpers/issuer.js'

// The series every process exports: known label values at 0 from the start (so rate() alerts fire
// on the first event), unmatched gateway requests under one route label, authorization denials and
// the auth service's refusals by reason, upstream time apart from the total, promtool-clean names.

const esc = (s: string): string => s.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')

t.test('process metrics: no gauge named _total, the per-type gauges kept', async (t) => {
  const app = Fastify()
  await app.register(metrics)
  t.teardown(() => app.close())
  const body = await app.metricsRegistry.metrics()
  for (const name of GAUGES_NAMED_TOTAL) t.notMatch(body, new RegExp(`^${name}\\b`, 'm'), `${name} is not exported`)
  t.match(body, /^# TYPE nodejs_active_handles gauge$/m, 'nodejs_active_handles (by type) stays')
  t.match(body, /^process_cpu_user_seconds_total /m, 'the other defaults stay')
  t.notMatch(body, /http_request_summary_seconds/, 'no route summary by default (its name names its type)')

  const registry = new promClient.Registry()
  collectProcessMetrics(registry)
  const own = await registry.metrics()
  for (const name of GAUGES_NAMED_TOTAL) t.notMatch(own, new RegExp(`^${name}\\b`, 'm'), `${name}: not in a registry of its own either`)
  t.match(own, /^nodejs_heap_size_used_bytes /m)
})

t.test('gateway: zero series up front, unmatched requests under route="__unknown__", denials by reason, upstream time', async (t) => {
  const issuer = await startTestIssuer()
  const api = await echoUpstream('api')
  const [deadPort] = await freePorts(1)
  const dead = `http://127.0.0.1:${deadPort!}`
  const gw = await buildGateway({
    config: parseGatewayConfig({
      issuers: [{ issuer: issuer.url, audience: 'portcullis' }],
      routes: [
        { prefix: '/api', upstream: api.url },
        { name: 'orders', prefix: '/orders', upstream: api.url, permissions: ['order:read'] },
        { prefix: '/admin', upstream: api.url, roles: ['admin'] },
        { prefix: '/down', upstream: dead }
      ]
    }, 'test'),
    logger: false
  })
  await gw.app.listen({ port: 0, host: '127.0.0.1' })
  await issuer.waitForFetches(1)
  await gw.app.jwksAuth.refresh()
  t.teardown(async () => {
    await gw.close()
    await Promise.all([issuer.close(), api.close()])
  })
  const addr = gw.app.server.address()
  const base = `http://127.0.0.1:${typeof addr === 'object' && addr !== null ? addr.port : 0}`
  const scrape = async (): Promise<string> => (await gw.admin.inject({ url: '/metrics' })).body

  const before = await scrape()
  for (const upstream of [api.url, dead]) {
    for (const kind of UPSTREAM_ERROR_KINDS) {
      t.match(before, new RegExp(`^portcullis_upstream_errors_total\\{upstream="${esc(upstream)}",kind="${kind}"\\} 0$`, 'm'), `upstream errors ${upstream} ${kind} at 0`)
    }
  }
  t.match(before, new RegExp(`^portcullis_jwks_stale_served_total\\{issuer="${esc(issuer.url)}"\\} 0$`, 'm'), 'stale serving at 0 for the issuer')
  for (const reason of FAILURE_REASONS) {
    t.match(before, new RegExp(`^portcullis_auth_requests_total\\{result="failure",reason="${reason}"\\} 0$`, 'm'), `auth failure ${reason} at 0`)
  }
  for (const reason of ['role', 'permission', 'scope']) {
    t.match(before, new RegExp(`^portcullis_authorization_denials_total\\{reason="${reason}"\\} 0$`, 'm'), `denials ${reason} at 0`)
  }

  const token = issuer.sign({ sub: 'bob', role: 'user', permissions: [] })
  const auth = { authorization: `Bearer ${token}` }
  t.equal((await rawRequest(base, '/nowhere/12345', { headers: auth })).status, 404)
  t.equal((await rawRequest(base, '/elsewhere', { headers: auth })).status, 404)
  t.equal((await rawRequest(base, '/nowhere/..;x/secret', { headers: auth })).status, 400, 'a refused path on no route')
  t.equal((await rawRequest(base, '/nowhere/%zz', { headers: auth })).status, 400, 'a malformed URL, refused by the router')
  t.equal((await rawRequest(base, '/orders/1', { headers: auth })).status, 403, 'no order:read')
  t.equal((await rawRequest(base, '/admin/x', { headers: auth })).status, 403, 'not admin')
  t.equal((await rawRequest(base, '/orders/2', { headers: auth })).status, 403)
  t.equal((await rawRequest(base, '/api/x', { headers: auth })).status, 200)
  t.equal((await rawRequest(base, '/down/x', { headers: auth })).status, 502)

  const after = await scrape()
  t.match(after, /^http_request_duration_seconds_count\{method="GET",route="__unknown__",status_code="404"\} 2$/m, 'both 404s under one route label')
  t.match(after, /^http_request_duration_seconds_count\{method="GET",route="__unknown__",status_code="400"\} 2$/m, 'the refused path and the malformed URL too')
  t.notMatch(after, /nowhere|elsewhere|12345|secret|zz/, 'never the raw URL')
  t.match(after, /^http_request_duration_seconds_bucket\{le="0.0005",method="GET",route="\/api\/\*",status_code="200"\} \d+$/m, 'buckets from 0.5 ms')
  t.match(after, /^portcullis_authorization_denials_total\{reason="permission"\} 2$/m)
  t.match(after, /^portcullis_authorization_denials_total\{reason="role"\} 1$/m)
  t.match(after, /^portcullis_authorization_denials_total\{reason="scope"\} 0$/m)
  t.match(after, new RegExp(`^portcullis_upstream_duration_seconds_count\\{route="/api",upstream="${esc(api.url)}",status_code="200"\\} 1$`, 'm'), 'upstream time of the proxied request')
  t.match(after, new RegExp(`^portcullis_upstream_duration_seconds_bucket\\{le="0.0005",route="/api",upstream="${esc(api.url)}",status_code="200"\\} \\d+$`, 'm'))
  t.match(after, new RegExp(`^portcullis_upstream_errors_total\\{upstream="${esc(dead)}",kind="refused"\\} 1$`, 'm'))
  t.notMatch(after, /portcullis_upstream_duration_seconds_count\{route="\/down"/, 'a failed upstream request has no upstream time (it is an upstream error)')
  const total = Number(/^http_request_duration_seconds_sum\{method="GET",route="\/api\/\*",status_code="200"\} (\S+)$/m.exec(after)?.[1])
  const upstream = Number(new RegExp(`^portcullis_upstream_duration_seconds_sum\\{route="/api",upstream="${esc(api.url)}",status_code="200"\\} (\\S+)$`, 'm').exec(after)?.[1])
  t.ok(upstream > 0 && upstream <= total, `upstream time ${upstream} s within the total ${total} s`)
})

t.test('a service with jwks-auth: its denials counted by reason', async (t) => {
  const issuer = await startTestIssuer()
  t.teardown(() => issuer.close())
  const app = Fastify()
  await app.register(metrics, { defaultMetrics: false })
  await app.register(jwksAuth, { issuers: [{ issuer: issuer.url, audience: 'portcullis' }] })
  app.get('/write', { config: { auth: { scopes: ['w'] } } }, async () => 'ok')
  await app.ready()
  t.teardown(() => app.close())
  await app.jwksAuth.refresh()
  const res = await app.inject({ url: '/write', headers: { authorization: `Bearer ${issuer.sign({ sub: 's', scope: 'r' })}` } })
  t.equal(res.statusCode, 403)
  const body = await app.metricsRegistry.metrics()
  t.match(body, /^portcullis_authorization_denials_total\{reason="scope"\} 1$/m)
  t.match(body, new RegExp(`^portcullis_jwks_stale_served_total\\{issuer="${esc(issuer.url)}"\\} 0$`, 'm'))
})

for (const backend of (await testBackends()).slice(0, 1)) {
  t.test(`auth service refusals by reason (${backend.name})`, { skip: backend.skip }, async (t) => {
    const b = await backend.open()
    const f = await authFixture(b)
    t.teardown(async () => { await f.service.close(); await b.cleanup() })
    const scrape = async (): Promise<string> => (await f.service.admin.inject({ url: '/metrics' })).body
    const before = await scrape()
    for (const reason of LOGIN_FAILURES) t.match(before, new RegExp(`^portcullis_login_failures_total\\{reason="${reason}"\\} 0$`, 'm'), `${reason} at 0`)

    const { clientSecret } = await f.clients.add({ clientId: 'svc', scopes: ['a'] })
    const token = async (form: Record<string, string>): Promise<number> => (await f.service.app.inject({
      method: 'POST', url: '/oauth/token', headers: { 'content-type': 'application/x-www-form-urlencoded' }, payload: new URLSearchParams(form).toString()
    })).statusCode
    t.equal(await token({ grant_type: 'client_credentials', client_id: 'svc', client_secret: 'wrong' }), 401)
    t.equal(await token({ grant_type: 'client_credentials', client_id: 'nobody', client_secret: 'x' }), 401)
    t.equal(await token({ grant_type: 'client_credentials' }), 401, 'no credentials at all')
    t.equal(await token({ grant_type: 'client_credentials', client_id: 'svc', client_secret: clientSecret, scope: 'b' }), 400)
    t.equal(await token({ grant_type: 'refresh_token', refresh_token: 'not-a-token' }), 400)
    const refresh = await f.service.app.inject({ method: 'POST', url: '/auth/refresh', payload: { refresh_token: 'also-unknown' } })
    t.equal(refresh.statusCode, 401)

    const after = await scrape()
    t.match(after, /^portcullis_login_failures_total\{reason="invalid_client"\} 3$/m)
    t.match(after, /^portcullis_login_failures_total\{reason="invalid_scope"\} 1$/m)
    t.match(after, /^portcullis_login_failures_total\{reason="refresh_unknown"\} 2$/m)
    t.notMatch(after, /http_request_summary_seconds/, 'no summary (promtool refuses its name)')
  })
}
