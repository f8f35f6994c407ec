import { spawnSync } from 'node:child_process'
import { createServer, type AddressInfo } from 'node:net'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { loadGatewayConfig, parseGatewayConfig } from '../gateway/config.js'
import { DEFAULT_CONFIG_PATH, settingsFromEnv } from '../gateway/main.js'

const ISSUER = { issuer: 'http://127.0.0.1:3000', audience: 'portcullis' }

t.test('defaults are filled in and durations parsed', async (t) => {
  const c = parseGatewayConfig({
    issuers: [ISSUER],
    timeouts: { headers: '250ms' },
    routes: [
      { prefix: '/api', upstream: 'http://127.0.0.1:3001', rateLimit: { max: 5, timeWindow: '2m' } },
      { prefix: '/pub', upstream: 'http://127.0.0.1:3002', auth: false, timeouts: { connect: 0.5 }, rateLimit: false }
    ]
  }, 'inline')
  t.same(c.routes[0], {
    name: '/api', prefix: '/api', upstream: 'http://127.0.0.1:3001', rewritePrefix: undefined, methods: undefined,
    auth: true, roles: [], permissions: [], scopes: [], rateLimit: { max: 5, timeWindow: 120 },
    timeouts: { connect: 2, headers: 0.25, body: 30 }
  })
  t.equal(c.routes[1]!.auth, false)
  t.equal(c.routes[1]!.rateLimit, false)
  t.same(c.routes[1]!.timeouts, { connect: 0.5, headers: 0.25, body: 30 })
  t.same(c.rateLimit, { max: 100, timeWindow: 60 })
  t.same(c.breaker, { failureThreshold: 5, resetTimeout: 10 })
  t.equal(c.trustProxy, false)
})

t.test('a bad route file names the problem', async (t) => {
  const bad: Array<[unknown, RegExp]> = [
    [{}, /inline: \(top level\): must have required property 'routes'/],
    [{ routes: [] }, /routes: must NOT have fewer than 1 items/],
    [{ issuers: [ISSUER], routes: [{ prefix: '/a', upstream: 'ftp://x' }] }, /routes\/0\/upstream: must match pattern/],
    [{ issuers: [ISSUER], routes: [{ prefix: 'a', upstream: 'http://x' }] }, /routes\/0\/prefix: must match pattern/],
    [{ issuers: [ISSUER], routes: [{ prefix: '/a/../b', upstream: 'http://x' }] }, /routes\/0\/prefix: dot segments/],
    [{ issuers: [ISSUER], routes: [{ prefix: '/a', upstream: 'http://x', oops: 1 }] }, /routes\/0: must NOT have additional properties "oops"/],
    [{ issuers: [ISSUER], routes: [{ prefix: '/a', upstream: 'http://x' }, { prefix: '/a', upstream: 'http://y' }] }, /routes\/1\/prefix: "\/a" is listed twice/],
    [{ routes: [{ prefix: '/a', upstream: 'http://x' }] }, /issuers: at least one issuer/],
    [{ issuers: [ISSUER], routes: [{ prefix: '/a', upstream: 'http://x', timeouts: { headers: '10 parsecs' } }] }, /routes\/0\/timeouts\/headers/],
    [{ issuers: [ISSUER], routes: [{ prefix: '/a', upstream: 'http://x', rateLimit: { max: -1 } }] }, /routes\/0\/rateLimit/],
    // what is allowed, not the first failed branch of an anyOf ("must be equal to constant")
    [{ issuers: [ISSUER], routes: [{ prefix: '/a', upstream: 'http://x', rateLimit: { max: 10, timeWindow: 'soon' } }] }, /^Invalid configuration: inline: routes\/0\/rateLimit\/timeWindow: must be a duration: a positive number of seconds, or a string with a unit \(250ms, 5s, 1m, 1h, 1d\)$/],
    [{ issuers: [ISSUER], routes: [{ prefix: '/a', upstream: 'http://x', rateLimit: { max: 10, extra: 1 } }] }, /^Invalid configuration: inline: routes\/0\/rateLimit: must NOT have additional properties "extra"$/],
    [{ issuers: [ISSUER], routes: [{ prefix: '/a', upstream: 'http://x', rateLimit: true }] }, /^Invalid configuration: inline: routes\/0\/rateLimit: must be false \(no limit\) or an object \{ max, timeWindow \}$/],
    [{ issuers: [ISSUER], routes: [{ prefix: '/a', upstream: 'http://x', rateLimit: { max: 0 } }] }, /^Invalid configuration: inline: routes\/0\/rateLimit\/max: must be >= 1$/],
    [{ issuers: [ISSUER], routes: [{ prefix: '/a', upstream: 'http://x', timeouts: { connect: 'forever' } }] }, /^Invalid configuration: inline: routes\/0\/timeouts\/connect: must be a duration/],
    [{ issuers: [ISSUER], routes: [{ prefix: '/a', upstream: 'http://x', methods: ['GETT'] }] }, /^Invalid configuration: inline: routes\/0\/methods\/0: must be equal to one of the allowed values \(GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS\)$/],
    [{ issuers: [{ ...ISSUER, algorithms: ['HS256'] }], routes: [{ prefix: '/a', upstream: 'http://x' }] }, /^Invalid configuration: inline: issuers\/0\/algorithms\/0: must be equal to one of the allowed values \(RS256, RS384, RS512, PS256, PS384, PS512\)$/]
  ]
  for (const [data, re] of bad) t.throws(() => parseGatewayConfig(data, 'inline'), re)
})

t.test('YAML and JSON files load; unreadable or unparsable files name the path', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-gw-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const json = join(dir, 'routes.json')
  writeFileSync(json, JSON.stringify({ routes: [{ prefix: '/p', upstream: 'http://127.0.0.1:1', auth: false }] }))
  t.equal(loadGatewayConfig(json).routes[0]!.prefix, '/p')
  const yaml = join(dir, 'routes.yaml')
  writeFileSync(yaml, 'routes:\n  - prefix: /p\n    upstream: [unclosed\n')
  t.throws(() => loadGatewayConfig(yaml), new RegExp(`${yaml}: not valid YAML`))
  t.throws(() => loadGatewayConfig(join(dir, 'missing.yaml')), /missing\.yaml: cannot read the route file \(ENOENT\)/)
  t.ok(loadGatewayConfig(DEFAULT_CONFIG_PATH).routes.length > 0, 'the shipped example is valid')
})

t.test('env settings are validated with the variable named', async (t) => {
  const s = settingsFromEnv({})
  t.equal(s.port, 8080)
  t.equal(s.adminPort, 8090)
  t.equal(s.host, '127.0.0.1')
  t.equal(s.failClosed, false)
  t.equal(s.tls, undefined)
  t.throws(() => settingsFromEnv({ GATEWAY_PORT: 'eighty' }), /GATEWAY_PORT: expected an integer/)
  t.throws(() => settingsFromEnv({ REDIS_URL: 'http://x' }), /REDIS_URL: expected a redis: or rediss: URL/)
  t.throws(() => settingsFromEnv({ GATEWAY_TLS_CERT: '/x.pem' }), /GATEWAY_TLS_KEY: GATEWAY_TLS_CERT and GATEWAY_TLS_KEY must be set together/)
  t.throws(() => settingsFromEnv({ GATEWAY_TLS_CERT: '/nonexistent.pem', GATEWAY_TLS_KEY: '/nonexistent.key' }), /GATEWAY_TLS_CERT: cannot read/)
  t.throws(() => settingsFromEnv({ GATEWAY_RATE_LIMIT_FAIL_CLOSED: 'maybe' }), /GATEWAY_RATE_LIMIT_FAIL_CLOSED/)
  t.throws(() => settingsFromEnv({ GATEWAY_SHUTDOWN_GRACE: 'soon' }), /GATEWAY_SHUTDOWN_GRACE/)
  t.throws(() => settingsFromEnv({ LOG_LEVEL: 'loud' }), /LOG_LEVEL: expected one of/)
  t.equal(s.memoryTuning, true)
  t.throws(() => settingsFromEnv({ GATEWAY_MEMORY_TUNING: 'sometimes' }), /GATEWAY_MEMORY_TUNING/)
})

t.test('`portcullis gateway` with a bad route file stops at boot naming the file and the problem', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-gw-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const bad = join(dir, 'routes.yaml')
  writeFileSync(bad, 'issuers: []\nroutes:\n  - prefix: /api\n    upstream: not-a-url\n')
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'cli/portcullis.ts', 'gateway'], {
    env: { ...process.env, GATEWAY_CONFIG: bad, GATEWAY_PORT: '0', GATEWAY_ADMIN_PORT: '0' },
    encoding: 'utf8',
    timeout: 60_000
  })
  t.equal(r.status, 1)
  t.equal(r.stderr.trim(), `portcullis: Invalid configuration: ${bad}: routes/0/upstream: must match pattern "^https?://"`)
})

t.test('`portcullis gateway` on a port in use exits 1 with one line naming the setting (nothing left running)', async (t) => {
  const blocker = createServer()
  await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve))
  t.teardown(() => blocker.close())
  const port = (blocker.address() as AddressInfo).port
  const gateway = (env: Record<string, string>, args: string[] = []): ReturnType<typeof spawnSync> => spawnSync(process.execPath, ['--import', 'tsx', 'cli/portcullis.ts', 'gateway', ...args], {
    env: { ...process.env, LOG_LEVEL: 'error', ...env },
    encoding: 'utf8',
    timeout: 60_000
  })
  const cases: Array<[Record<string, string>, string[], string]> = [
    [{ GATEWAY_PORT: String(port), GATEWAY_ADMIN_PORT: '0' }, [], `portcullis: Invalid configuration: GATEWAY_PORT: 127.0.0.1:${port} is already in use`],
    [{ GATEWAY_PORT: '0', GATEWAY_ADMIN_PORT: String(port) }, [], `portcullis: Invalid configuration: GATEWAY_ADMIN_PORT: 127.0.0.1:${port} is already in use`],
    [{ GATEWAY_PORT: '0', GATEWAY_ADMIN_PORT: '0' }, ['--bogus'], 'portcullis: gateway: unknown argument "--bogus" (settings come from the environment; see portcullis gateway --help)']
  ]
  for (const [env, args, line] of cases) {
    const r = gateway(env, args)
    t.equal(r.status, 1, line)
    t.equal(String(r.stderr).trim(), line)
  }
})
