import { randomBytes } from 'node:crypto'
import t from 'tap'
import { prometheusSkip, promtoolCheckMetrics, startPrometheus, type ScrapeTarget } from './helpers/prometheus.js'
import { call, runningStack } from './helpers/stack.js'

// A real Prometheus (Debian's `prometheus` package) scraping every process of `portcullis start`
// every second: each target is up, the series the docs name exist, and after known traffic through
// the gateway and auth they moved by exactly (or, where the stack's own background calls add to
// them, at least) what was sent. `promtool check metrics` runs on every endpoint's output.
t.setTimeout(90_000)

const skip = prometheusSkip()

/**
 * Endpoints whose `promtool check metrics` must be clean: all of them since the metrics fixes of issue
 * 15 (a0f8cb9: no gauges named `_total`, no summary naming its type). The output is printed for each.
 */
const PROMTOOL_CLEAN = new Set<string>(['gateway', 'auth', 'rotation', 'user', 'order', 'product'])

const JOBS = ['gateway', 'auth', 'rotation', 'user', 'order', 'product'] as const


t.test('a real Prometheus scrapes every process of the stack; series and values match the traffic sent', { skip }, async (t) => {
  const started = Date.now()
  const { stack, ports } = await runningStack(t)
  const u = stack.urls
  const admin = (port: number): string => `http://127.0.0.1:${port}/metrics`
  const targets: ScrapeTarget[] = [
    { job: 'gateway', url: `${u.gatewayAdmin}/metrics` },
    { job: 'auth', url: `${u.authAdmin}/metrics` },
    { job: 'rotation', url: `${u.rotationMetrics}/metrics` },
    { job: 'user', url: admin(ports.USER_SERVICE_ADMIN_PORT) },
    { job: 'order', url: admin(ports.ORDER_SERVICE_ADMIN_PORT) },
    { job: 'product', url: admin(ports.PRODUCT_SERVICE_ADMIN_PORT) }
  ]
  const prom = await startPrometheus({ targets })
  t.teardown(() => prom.stop())
  t.comment(`prometheus ${prom.url}, scraping ${targets.map((x) => `${x.job}=${x.url}`).join(' ')}`)

  // Every target scraped (twice, so the first scrape is queryable) and up.
  const first = await prom.scrapedAfter(Date.now())
  t.same(first.map((x) => x.job).sort(), [...JOBS].sort(), 'one target per process')
  for (const target of first) t.equal(target.health, 'up', `${target.job}: ${target.scrapeUrl} scraped without error ${target.lastError}`)
  const up = await prom.query('up')
  for (const job of JOBS) t.equal(up.find((s) => s.metric.job === job)?.value, 1, `up{job="${job}"} == 1`)

  // The values before the traffic; a series that does not exist yet counts 0.
  const EXPRS = {
    gw200: 'sum(http_request_duration_seconds_count{job="gateway",status_code="200"})',
    gw201: 'sum(http_request_duration_seconds_count{job="gateway",status_code="201"})',
    gw401: 'sum(http_request_duration_seconds_count{job="gateway",status_code="401"})',
    gw403: 'sum(http_request_duration_seconds_count{job="gateway",status_code="403"})',
    gw404: 'sum(http_request_duration_seconds_count{job="gateway",route="__unknown__",status_code="404"})',
    gwUpstream: 'sum(portcullis_upstream_duration_seconds_count{job="gateway"})',
    gwAuthOk: 'sum(portcullis_auth_requests_total{job="gateway",result="success"})',
    gwAuthFail: 'sum(portcullis_auth_requests_total{job="gateway",result="failure"})',
    gwMissing: 'sum(portcullis_auth_requests_total{job="gateway",result="failure",reason="missing"})',
    gwBadSignature: 'sum(portcullis_auth_requests_total{job="gateway",result="failure",reason="bad_signature"})',
    logins: 'sum(portcullis_tokens_issued_total{job="auth",grant="login"})',
    badLogins: 'sum(portcullis_login_failures_total{job="auth",reason="invalid_credentials"})',
    orderAuthOk: 'sum(portcullis_auth_requests_total{job="order",result="success"})',
    userAuthOk: 'sum(portcullis_auth_requests_total{job="user",result="success"})',
    productAuthOk: 'sum(portcullis_auth_requests_total{job="product",result="success"})',
    orderRequests: 'sum(http_request_duration_seconds_count{job="order"})',
    orderDenials: 'sum(portcullis_authorization_denials_total{job="order",reason="permission"})'
  } as const
  type Key = keyof typeof EXPRS
  const snapshot = async (): Promise<Record<Key, number>> => Object.fromEntries(
    await Promise.all(Object.entries(EXPRS).map(async ([k, e]) => [k, (await prom.value(e)) ?? 0] as const))
  ) as Record<Key, number>
  const before = await snapshot()

  // Counters whose label values are known exist at 0 before their first event (so rate() alerts fire on it).
  for (const expr of ['portcullis_jwks_stale_served_total{job="gateway"}', 'portcullis_upstream_errors_total{job="gateway"}',
    'portcullis_rotation_runs_total{job="rotation",result="error"}', 'portcullis_login_failures_total{job="auth"}']) {
    const r = await prom.query(expr)
    t.ok(r.length > 0 && r.every((x) => x.value === 0), `${expr}: ${r.length} series, all at 0 before any event`)
  }

  // Known traffic: 3 logins and 1 wrong password at auth; through the gateway 5 x 200, 1 x 201,
  // 1 x 403 (bob may not place orders), 4 x 401 (2 without a token, 2 with a tampered one), 1 x 404.
  const login = async (username: string, password: string): Promise<{ status: number, body: Record<string, unknown> }> =>
    await call('POST', `${u.auth}/auth/login`, { body: { username, password } })
  const alice = await login('alice', 'alice-demo-pass')
  t.equal(alice.status, 200, 'alice logs in')
  t.equal((await login('alice', 'alice-demo-pass')).status, 200, 'alice logs in again')
  const bob = await login('bob', 'bob-demo-pass')
  t.equal(bob.status, 200, 'bob logs in')
  t.equal((await login('alice', 'not-her-password')).status, 401, 'a wrong password')
  const token = alice.body.access_token as string
  const statuses: number[] = []
  for (let i = 0; i < 3; i++) statuses.push((await call('GET', `${u.gateway}/api/orders`, { token })).status)
  for (let i = 0; i < 2; i++) statuses.push((await call('GET', `${u.gateway}/api/users/me`, { token })).status)
  statuses.push((await call('POST', `${u.gateway}/api/orders`, { token, body: { items: [{ productId: 'p-1', quantity: 1 }] } })).status)
  statuses.push((await call('POST', `${u.gateway}/api/orders`, { token: bob.body.access_token as string, body: { items: [{ productId: 'p-1', quantity: 1 }] } })).status)
  const [h, p, s] = token.split('.') as [string, string, string]
  const forged = [h, Buffer.from(JSON.stringify({ ...JSON.parse(Buffer.from(p, 'base64url').toString()) as object, role: 'admin' })).toString('base64url'), s].join('.')
  for (let i = 0; i < 2; i++) statuses.push((await call('GET', `${u.gateway}/api/orders`)).status)
  for (let i = 0; i < 2; i++) statuses.push((await call('GET', `${u.gateway}/api/orders`, { token: forged })).status)
  const unrouted = `/no-such-route-${randomBytes(6).toString('hex')}`
  statuses.push((await call('GET', `${u.gateway}${unrouted}`, { token })).status)
  t.same(statuses, [200, 200, 200, 200, 200, 201, 403, 401, 401, 401, 401, 404], 'the gateway answered the traffic as intended')

  // A scrape of every target that started after the last answer (onResponse hooks have run by then).
  await new Promise((resolve) => setTimeout(resolve, 100))
  await prom.scrapedAfter(Date.now())
  const after = await snapshot()
  const d = Object.fromEntries(Object.keys(EXPRS).map((k) => [k, after[k as Key] - before[k as Key]])) as Record<Key, number>
  t.comment(`increases: ${JSON.stringify(d)}`)

  // The gateway: nothing but this test calls its public port, so its counters moved by exactly the traffic.
  t.equal(d.gw200, 5, 'gateway: http_request_duration_seconds_count{status_code="200"} +5')
  t.equal(d.gw201, 1, 'gateway: http_request_duration_seconds_count{status_code="201"} +1')
  t.equal(d.gw403, 1, 'gateway: http_request_duration_seconds_count{status_code="403"} +1')
  t.equal(d.gw401, 4, 'gateway: http_request_duration_seconds_count{status_code="401"} +4')
  // Authentication is global in the gateway (before routing): the 404 with alice's token is verified too.
  t.equal(d.gwAuthOk, 8, 'gateway: portcullis_auth_requests_total{result="success"} +8 (every request with a valid token, the 404\'s too)')
  t.equal(d.gwAuthFail, 4, 'gateway: portcullis_auth_requests_total{result="failure"} +4')
  t.equal(d.gwMissing, 2, 'gateway: portcullis_auth_requests_total{reason="missing"} +2 (no token)')
  t.equal(d.gwBadSignature, 2, 'gateway: portcullis_auth_requests_total{reason="bad_signature"} +2 (tampered)')
  t.equal(d.gw404, 1, 'gateway: the 404 counted once under route="__unknown__"')
  t.equal(d.gwUpstream, 7, 'gateway: portcullis_upstream_duration_seconds_count +7 (the 7 requests proxied; 401s and the 404 never reach an upstream)')
  const gatewaySeries = await prom.series('{job="gateway"}')
  t.ok(gatewaySeries.length > 0, 'gateway series listed')
  t.notOk(gatewaySeries.some((labels) => Object.values(labels).some((v) => v.includes(unrouted.slice(1)))), 'the 404\'s raw path is in no label of any gateway series')
  t.ok(((await prom.value('sum(portcullis_jwks_keys{job="gateway"})')) ?? 0) >= 1, 'gateway: portcullis_jwks_keys >= 1')
  const breakers = await prom.query('portcullis_circuit_breaker_state{job="gateway"}')
  t.ok(breakers.length >= 2 && breakers.every((b) => b.value === 0), `gateway: portcullis_circuit_breaker_state 0 (closed) for the upstreams called (${breakers.map((b) => b.metric.upstream).join(', ')})`)

  // auth: only this test logs users in (the services use client credentials).
  t.equal(d.logins, 3, 'auth: portcullis_tokens_issued_total{grant="login"} +3')
  t.equal(d.badLogins, 1, 'auth: portcullis_login_failures_total{reason="invalid_credentials"} +1')

  // The services also call each other and refresh order-service's catalog in the background: at least the traffic.
  t.ok(d.orderAuthOk >= 5, `order: portcullis_auth_requests_total{result="success"} +${d.orderAuthOk} >= 5 (3 lists, 2 orders placed)`)
  t.ok(d.orderRequests >= 5, `order: http_request_duration_seconds_count +${d.orderRequests} >= 5`)
  t.equal(d.orderDenials, 1, 'order: portcullis_authorization_denials_total{reason="permission"} +1 (bob placing an order)')
  t.ok(d.userAuthOk >= 3, `user: portcullis_auth_requests_total{result="success"} +${d.userAuthOk} >= 3 (2 through the gateway, 1 from order-service)`)
  t.ok(d.productAuthOk >= 1, `product: portcullis_auth_requests_total{result="success"} +${d.productAuthOk} >= 1 (the order's product check)`)

  // The rotation worker: its boot tick put one active key in place.
  t.equal(await prom.value('portcullis_keys{job="rotation",state="active"}'), 1, 'rotation: portcullis_keys{state="active"} == 1')
  t.equal(await prom.value('portcullis_rotation_runs_total{job="rotation",result="error"}'), 0, 'rotation: no failed tick')
  t.ok(((await prom.value('sum(portcullis_rotation_runs_total{job="rotation"})')) ?? 0) >= 1, 'rotation: at least one tick')
  const age = await prom.value('portcullis_signing_key_age_seconds{job="rotation"}')
  t.ok(age !== undefined && age >= 0 && age < 3600, `rotation: portcullis_signing_key_age_seconds ${age} (a key made at this start)`)
  const lastSuccess = await prom.value('portcullis_rotation_last_success_timestamp_seconds{job="rotation"}')
  t.ok(lastSuccess !== undefined && lastSuccess * 1000 >= started - 1000 && lastSuccess * 1000 <= Date.now() + 1000, 'rotation: last success during this test')

  // The series docs/operations.md lists for each process (those that exist before their first event, or
  // that this traffic produced), and process metrics everywhere.
  const documented: Record<typeof JOBS[number], string[]> = {
    gateway: ['http_request_duration_seconds_bucket', 'portcullis_upstream_duration_seconds_bucket', 'portcullis_auth_requests_total', 'portcullis_authorization_denials_total', 'portcullis_auth_verify_duration_seconds_bucket',
      'portcullis_jwks_refresh_total', 'portcullis_jwks_keys', 'portcullis_circuit_breaker_state', 'portcullis_config_info', 'portcullis_config_loaded_timestamp_seconds'],
    auth: ['http_request_duration_seconds_bucket', 'portcullis_tokens_issued_total', 'portcullis_login_failures_total', 'portcullis_refresh_token_reuse_total',
      'portcullis_signing_key_changes_total', 'portcullis_signing_key_read_failures_total'],
    rotation: ['portcullis_rotation_runs_total', 'portcullis_signing_key_age_seconds', 'portcullis_keys', 'portcullis_rotation_last_success_timestamp_seconds'],
    user: ['http_request_duration_seconds_bucket', 'portcullis_auth_requests_total', 'portcullis_auth_verify_duration_seconds_bucket', 'portcullis_jwks_keys'],
    order: ['http_request_duration_seconds_bucket', 'portcullis_auth_requests_total', 'portcullis_auth_verify_duration_seconds_bucket', 'portcullis_jwks_keys'],
    product: ['http_request_duration_seconds_bucket', 'portcullis_auth_requests_total', 'portcullis_auth_verify_duration_seconds_bucket', 'portcullis_jwks_keys']
  }
  for (const job of JOBS) {
    const names = new Set((await prom.query(`count by (__name__) ({job="${job}"})`)).map((x) => x.metric.__name__))
    const lacking = [...documented[job], 'process_cpu_seconds_total'].filter((n) => !names.has(n))
    t.same(lacking, [], `${job}: the documented series and process_cpu_seconds_total exist (${names.size} metric names)`)
  }

  // promtool check metrics on what each endpoint serves.
  for (const target of targets) {
    const res = await fetch(target.url)
    t.equal(res.status, 200, `${target.job}: GET ${target.url}`)
    const check = promtoolCheckMetrics(await res.text())
    t.comment(`promtool check metrics ${target.job}: exit ${check.status}${check.output === '' ? ' (clean)' : `\n${check.output}`}`)
    t.ok(check.status === 0 || check.status === 3, `${target.job}: promtool parses the exposition (exit ${check.status}: 0 clean, 3 lint findings)`)
    if (PROMTOOL_CLEAN.has(target.job)) t.equal(check.status, 0, `${target.job}: promtool check metrics is clean`)
  }
})
