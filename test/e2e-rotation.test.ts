import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { gone, headerOf, runningStack, SHORT_KEY_TIMINGS } from './helpers/stack.js'

/** The stack's short key timings (a new key every 9 s), without the stack's rate limits in the way. */
const SHORT_TIMINGS = {
  ...SHORT_KEY_TIMINGS,
  STACK_RATE_LIMIT_MAX: '1000000',
  STACK_PRODUCTS_RATE_LIMIT_MAX: '1000000'
}
const MIN_ROTATIONS = 3
const MIN_SECONDS = 20
const MAX_SECONDS = 60
/** Pause between one worker's iterations: a steady stream, not a CPU hog on a machine shared with other tests. */
const PACE_MS = 10
const pace = (): Promise<void> => new Promise((resolve) => setTimeout(resolve, PACE_MS))

interface Outcome { what: string, status: number, kid: string }

// A real stack under load on a 2-core machine shared by the suite, then up to 40 s for the children
// to stop: more than tap's default 120 s per file must not fail it.
t.setTimeout(240_000)

t.test('keys rotate several times under a steady stream of fresh tokens: no 401, no 5xx', async (t) => {
  const { stack, dataDir } = await runningStack(t, SHORT_TIMINGS)
  const u = stack.urls
  const demo = JSON.parse(readFileSync(join(dataDir, 'demo-credentials.json'), 'utf8')) as { client: { clientId: string, clientSecret: string } }

  const outcomes: Outcome[] = []
  const kids = new Set<string>()
  const started = Date.now()
  const done = (): boolean => {
    const s = (Date.now() - started) / 1000
    return s >= MAX_SECONDS || (s >= MIN_SECONDS && kids.size > MIN_ROTATIONS)
  }
  const record = (what: string, status: number, token: string | undefined): void => {
    const kid = token !== undefined ? String(headerOf(token).kid) : '-'
    if (token !== undefined) kids.add(kid)
    outcomes.push({ what, status, kid })
  }
  const post = (url: string, body: unknown, token?: string) => fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(token !== undefined ? { authorization: `Bearer ${token}` } : {}) },
    body: JSON.stringify(body)
  })

  // A service client: a new client-credentials token for every round of requests.
  const serviceWorker = async (): Promise<void> => {
    while (!done()) {
      const res = await fetch(`${u.auth}/oauth/token`, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({ grant_type: 'client_credentials', client_id: demo.client.clientId, client_secret: demo.client.clientSecret })
      })
      const tok = res.status === 200 ? ((await res.json()) as { access_token: string }).access_token : undefined
      record('token', res.status, undefined)
      if (tok === undefined) continue
      // the client's scope (products:read) reads products; orders need order:read, which it lacks
      for (const path of ['/api/products', '/api/products/p-1']) {
        const r = await fetch(`${u.gateway}${path}`, { headers: { authorization: `Bearer ${tok}` } })
        await r.arrayBuffer()
        record(`GET ${path}`, r.status, tok)
      }
      await pace()
    }
  }
  // A user: refreshes for a new access token, then places an order (gateway, order, user and
  // product services each verify that token).
  const userWorker = async (username: string): Promise<void> => {
    const login = await post(`${u.auth}/auth/login`, { username, password: `${username}-demo-pass` })
    t.equal(login.status, 200, `${username} logged in`)
    let refresh = ((await login.json()) as { refresh_token: string }).refresh_token
    while (!done()) {
      const res = await post(`${u.auth}/auth/refresh`, { refresh_token: refresh })
      record('refresh', res.status, undefined)
      if (res.status !== 200) return
      const pair = (await res.json()) as { access_token: string, refresh_token: string }
      refresh = pair.refresh_token
      const r = await post(`${u.gateway}/api/orders`, { items: [{ productId: 'p-3', quantity: 1 }] }, pair.access_token)
      await r.arrayBuffer()
      record('POST /api/orders', r.status, pair.access_token)
      await pace()
    }
  }
  await Promise.all([serviceWorker(), serviceWorker(), userWorker('alice'), userWorker('admin')])

  const seconds = (Date.now() - started) / 1000
  const by = (f: (o: Outcome) => boolean) => outcomes.filter(f)
  const unauthorized = by((o) => o.status === 401)
  const serverErrors = by((o) => o.status >= 500)
  const unexpected = by((o) => ![200, 201].includes(o.status))
  t.comment(`${outcomes.length} requests in ${seconds.toFixed(1)}s across ${kids.size} signing keys (${kids.size - 1} rotations)`)
  t.ok(kids.size > MIN_ROTATIONS, `tokens were signed by ${kids.size} different keys: at least ${MIN_ROTATIONS} rotations under load`)
  t.ok(outcomes.length > 200, `a steady stream (${outcomes.length} requests)`)
  t.same(unauthorized, [], 'zero 401s for valid tokens')
  t.same(serverErrors, [], 'zero 5xx')
  t.same(unexpected, [], 'every request succeeded')
  const rotations = stack.logs('rotation').filter((l) => l.rec.event === 'key_activate' || /activat/.test(String(l.rec.msg)))
  t.ok(rotations.length >= MIN_ROTATIONS, `the rotation worker logged ${rotations.length} activations`)

  // The stack killed outright (SIGKILL, out of memory: no chance to stop its children): each child
  // sees its IPC channel to the stack close and stops itself, so no orphan keeps serving or holding a port.
  const children = [...stack.pids.entries()]
  t.equal(children.length, 6, 'six children were started')
  stack.kill('SIGKILL')
  await stack.exited
  // Each child drains as on SIGTERM and is forced out at its grace period at the latest (the
  // gateway's GATEWAY_SHUTDOWN_GRACE, 30 s, is the longest): wait past it, on a loaded machine too.
  const deadline = Date.now() + 40_000
  while (Date.now() < deadline && !children.every(([, pid]) => gone(pid))) await new Promise((resolve) => setTimeout(resolve, 200))
  t.same(children.filter(([, pid]) => !gone(pid)).map(([name]) => name), [], 'every child stopped after the stack was SIGKILLed')
})
