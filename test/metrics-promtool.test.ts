import { spawnSync } from 'node:child_process'
import t from 'tap'
import { runningStack } from './helpers/stack.js'

// `promtool check metrics` on the real /metrics of every process of a running stack: gateway, auth,
// rotation worker and the three example services' admin listeners. Without promtool (Debian package
// `prometheus`) that part is skipped; the naming rules promtool applies that Portcullis once broke
// (a gauge or summary named `_total`, a name that names its type, a counter without `_total`) are
// checked here in any case.
t.setTimeout(180_000)

const PROMTOOL = spawnSync('promtool', ['--version'], { encoding: 'utf8' }).status === 0 ? 'promtool' : undefined

/** The promtool lint rules that concern names, on the text format: one message per problem. */
function nameProblems (text: string): string[] {
  const problems: string[] = []
  for (const line of text.split('\n')) {
    const m = /^# TYPE (\S+) (\S+)$/.exec(line)
    if (m === null) continue
    const [, name, type] = m as unknown as [string, string, string]
    if (type === 'counter' && !name.endsWith('_total')) problems.push(`${name}: counter without _total`)
    if (type !== 'counter' && name.endsWith('_total')) problems.push(`${name}: ${type} named _total`)
    if (name.includes(`_${type}_`) || name.endsWith(`_${type}`)) problems.push(`${name}: names its type ${type}`)
  }
  return problems
}

t.test('every process\'s /metrics passes promtool check metrics', async (t) => {
  const { stack, ports } = await runningStack(t)
  const u = stack.urls

  // some traffic, so the request histograms and the refusal counters have series
  const login = await fetch(`${u.auth}/auth/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ username: 'bob', password: 'bob-demo-pass' }) })
  t.equal(login.status, 200)
  const token = (await login.json() as { access_token: string }).access_token
  const auth = { authorization: `Bearer ${token}` }
  t.equal((await fetch(`${u.gateway}/api/orders`, { headers: auth })).status, 200)
  const denied = await fetch(`${u.gateway}/api/orders`, { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify({ items: [{ productId: 'p-1', quantity: 1 }] }) })
  t.equal(denied.status, 403, 'bob may not place orders (order-service refuses)')
  t.equal((await fetch(`${u.gateway}/no/such/route`, { headers: auth })).status, 404)
  const badClient = await fetch(`${u.auth}/oauth/token`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: 'grant_type=client_credentials&client_id=order-service&client_secret=wrong' })
  t.equal(badClient.status, 401)

  const endpoints: Record<string, string> = {
    gateway: `${u.gatewayAdmin}/metrics`,
    auth: `${u.authAdmin}/metrics`,
    rotation: `${u.rotationMetrics}/metrics`,
    user: `http://127.0.0.1:${ports.USER_SERVICE_ADMIN_PORT}/metrics`,
    order: `http://127.0.0.1:${ports.ORDER_SERVICE_ADMIN_PORT}/metrics`,
    product: `http://127.0.0.1:${ports.PRODUCT_SERVICE_ADMIN_PORT}/metrics`
  }
  const bodies: Record<string, string> = {}
  for (const [name, url] of Object.entries(endpoints)) {
    const res = await fetch(url)
    t.equal(res.status, 200, `${name} serves /metrics`)
    bodies[name] = await res.text()
    t.same(nameProblems(bodies[name]), [], `${name}: no metric name promtool refuses`)
  }
  t.match(bodies.gateway, /^http_request_duration_seconds_count\{method="GET",route="__unknown__",status_code="404"\} 1$/m, 'the gateway counted the 404 under route="__unknown__"')
  t.notMatch(bodies.gateway, /no\/such\/route/, 'never the raw URL')
  t.match(bodies.order, /^portcullis_authorization_denials_total\{reason="permission"\} 1$/m, 'order-service counted its 403 by reason')
  t.match(bodies.auth, /^portcullis_login_failures_total\{reason="invalid_client"\} 1$/m, 'auth counted invalid_client')
  t.match(bodies.gateway, /^portcullis_jwks_stale_served_total\{issuer="[^"]+"\} 0$/m, 'stale serving at 0 before any')
  t.match(bodies.gateway, /^portcullis_upstream_errors_total\{upstream="[^"]+",kind="refused"\} 0$/m, 'upstream errors at 0 before any')

  await t.test('promtool check metrics', { skip: PROMTOOL === undefined ? 'promtool is not installed (Debian package prometheus; .ci/run installs it)' : false }, async (t) => {
    for (const [name, body] of Object.entries(bodies)) {
      const r = spawnSync(PROMTOOL!, ['check', 'metrics'], { input: body, encoding: 'utf8' })
      t.equal(r.status, 0, `${name}: promtool check metrics exits 0`)
      t.equal(`${r.stdout}${r.stderr}`.trim(), '', `${name}: and reports nothing`)
    }
  })
})
