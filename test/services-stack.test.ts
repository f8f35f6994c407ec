import { spawnSync } from 'node:child_process'
import { existsSync, readFileSync, statSync } from 'node:fs'
import { createServer, type AddressInfo } from 'node:net'
import { join } from 'node:path'
import t from 'tap'
import { parseGatewayConfig } from '../gateway/config.js'
import { listeners, run as runStack } from '../cli/stack.js'
import { parseCommandArgs } from '../cli/users.js'
import { prettyLine } from '../cli/stack/children.js'
import { DEMO_FILE, DEMO_USERS, seedDemo } from '../cli/stack/demo.js'
import { stackRouteFile } from '../cli/stack/routes.js'
import { run as runServices } from '../services/main.js'
import { serviceConfigFromEnv } from '../services/config.js'
import { openClientStore } from '../store/clients.js'
import { openDb } from '../store/index.js'
import { openUserStore } from '../store/users.js'
import { stackPorts, tempDataDir } from './helpers/stack.js'

t.test('the generated route table passes the gateway\'s own validation', async (t) => {
  const file = stackRouteFile({
    issuer: 'http://127.0.0.1:3000', audience: 'portcullis', users: 'http://127.0.0.1:3001',
    orders: 'http://127.0.0.1:3002', products: 'http://127.0.0.1:3003', rateLimitMax: 100, productsRateLimitMax: 10
  })
  const cfg = parseGatewayConfig(file, 'generated')
  t.same(cfg.routes.map((r) => [r.prefix, r.upstream, r.rewritePrefix, r.auth]), [
    ['/api/users', 'http://127.0.0.1:3001', '/users', true],
    ['/api/orders', 'http://127.0.0.1:3002', '/orders', true],
    ['/api/products', 'http://127.0.0.1:3003', '/products', true]
  ])
  t.same(cfg.routes[2]!.rateLimit, { max: 10, timeWindow: 60 })
  t.same(cfg.rateLimit, { max: 100, timeWindow: 60 })
})

t.test('demo accounts are created on the first start only, and work', async (t) => {
  const data = tempDataDir()
  t.teardown(data.remove)
  const db = openDb({ sqlitePath: join(data.dir, 'portcullis.db') })
  t.teardown(() => db.close())
  const env = { PASSWORD_SCRYPT_N: '1024' }
  const first = await seedDemo(db, data.dir, env)
  t.equal(first.created, true)
  t.equal(statSync(join(data.dir, DEMO_FILE)).mode & 0o777, 0o600, 'the credentials file is private')
  const users = await openUserStore(db)
  for (const u of DEMO_USERS) t.match(await users.verify(u.username, u.password), { role: u.role, permissions: u.permissions }, `${u.username} can log in`)
  const clients = await openClientStore(db)
  t.ok(await clients.verify(first.state.client.clientId, first.state.client.clientSecret), 'the printed client secret is valid')

  const second = await seedDemo(db, data.dir, env)
  t.equal(second.created, false)
  t.same(second.state, first.state, 'the second start reads the first start\'s accounts')
  t.equal((await users.list()).length, DEMO_USERS.length, 'nobody added twice')
  t.same(JSON.parse(readFileSync(join(data.dir, DEMO_FILE), 'utf8')), first.state)
})

t.test('pino lines are made readable; other lines pass through', async (t) => {
  const line = JSON.stringify({ level: 30, time: Date.UTC(2026, 0, 1, 12, 34, 56), pid: 1, hostname: 'h', name: 'order-service', reqId: 'r1', msg: 'request completed', statusCode: 201, sub: 'u1' })
  t.equal(prettyLine(line), '12:34:56 INFO  request completed reqId=r1 statusCode=201 sub=u1')
  t.equal(prettyLine('(node:1) Warning: something'), '(node:1) Warning: something')
  t.equal(prettyLine('{not json'), '{not json')
})

t.test('a service whose port is taken exits 1 naming the setting', async (t) => {
  const blocker = createServer()
  await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve))
  t.teardown(() => blocker.close())
  const port = (blocker.address() as AddressInfo).port
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'cli/portcullis.ts', 'services', 'product'], {
    env: { ...process.env, PRODUCT_SERVICE_PORT: String(port), LOG_LEVEL: 'error' },
    encoding: 'utf8',
    timeout: 60_000
  })
  t.equal(r.status, 1)
  t.equal(r.stderr.trim(), `portcullis: Invalid configuration: PRODUCT_SERVICE_PORT: 127.0.0.1:${port} is already in use`)
})

t.test('`portcullis start` refuses a port in use, or one port named twice, before starting or creating anything', async (t) => {
  const blocker = createServer()
  await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve))
  t.teardown(() => blocker.close())
  const taken = (blocker.address() as AddressInfo).port
  const data = tempDataDir()
  t.teardown(data.remove)
  const dataDir = join(data.dir, 'not-yet')
  const ports = Object.fromEntries(Object.entries(await stackPorts()).map(([k, v]) => [k, String(v)]))
  const start = (env: Record<string, string>): ReturnType<typeof spawnSync> => spawnSync(process.execPath, ['--import', 'tsx', 'cli/portcullis.ts', 'start'], {
    env: { ...process.env, ...ports, PORTCULLIS_DATA_DIR: dataDir, ...env },
    encoding: 'utf8',
    timeout: 60_000
  })
  const inUse = start({ GATEWAY_PORT: String(taken) })
  t.equal(inUse.status, 1)
  t.equal(String(inUse.stderr).trim(), `portcullis: Invalid configuration: GATEWAY_PORT: 127.0.0.1:${taken} is already in use (another Portcullis stack, or another program?)`)
  const twice = start({ USER_SERVICE_PORT: ports.AUTH_PORT! })
  t.equal(twice.status, 1)
  t.equal(String(twice.stderr).trim(), `portcullis: Invalid configuration: USER_SERVICE_PORT: must differ from AUTH_PORT (${ports.AUTH_PORT})`)
  t.notOk(existsSync(dataDir), 'no data directory was created')
})

t.test('bad commands and settings fail with one clear message', async (t) => {
  await t.rejects(runStack(['--bogus']), { code: 'PORTCULLIS_USAGE', message: /unknown option "--bogus"/ })
  await t.rejects(runStack(['--log-format', 'xml']), { code: 'PORTCULLIS_USAGE' })
  await t.rejects(runServices(['shipping']), { code: 'PORTCULLIS_USAGE', message: /user, order, product/ })
  t.throws(() => parseCommandArgs('users add', ['bob', '--bogus'], { role: { type: 'string' } }, 1), { code: 'PORTCULLIS_USAGE', message: 'users add: unknown option "--bogus"' })
  await t.rejects(runServices(['user', '--bogus']), { code: 'PORTCULLIS_USAGE', message: 'services user: unknown argument "--bogus" (settings come from the environment; see portcullis services --help)' })
  t.throws(() => serviceConfigFromEnv('order', { SERVICE_CLIENT_ID: 'x' }), { code: 'PORTCULLIS_CONFIG', message: /SERVICE_CLIENT_SECRET/ })
  t.throws(() => serviceConfigFromEnv('user', { USER_SERVICE_PORT: 'eighty' }), { message: /USER_SERVICE_PORT/ })
  t.throws(() => serviceConfigFromEnv('user', { AUTH_ISSUER: 'ftp://x' }), { message: /AUTH_ISSUER/ })
  t.throws(() => serviceConfigFromEnv('user', { SERVICE_UPSTREAM_TIMEOUT: 'soon' }), { message: /SERVICE_UPSTREAM_TIMEOUT/ })
  t.throws(() => serviceConfigFromEnv('user', { JWKS_REFRESH_INTERVAL: '-1' }), { message: /JWKS_REFRESH_INTERVAL/ })
  t.throws(() => serviceConfigFromEnv('user', { JWKS_TOKEN_CACHE_MAX: 'lots' }), { message: /JWKS_TOKEN_CACHE_MAX/ })
  t.throws(() => serviceConfigFromEnv('user', { JWKS_TOKEN_CACHE_MAX: '-1' }), { message: /JWKS_TOKEN_CACHE_MAX/ })
  t.throws(() => serviceConfigFromEnv('user', { LOG_LEVEL: 'loud' }), { message: /LOG_LEVEL/ })
  const ok = serviceConfigFromEnv('order', { AUTH_ISSUER: 'http://auth.local:4000/', SERVICE_HOST: '0.0.0.0' })
  t.match(ok, { port: 3002, issuer: 'http://auth.local:4000', jwksUri: 'http://auth.local:4000/.well-known/jwks.json', tokenUrl: 'http://auth.local:4000/oauth/token', userServiceUrl: 'http://127.0.0.1:3001', upstreamTimeout: 5000, client: undefined })
})

t.test('the stack waits for the gateway admin listener where GATEWAY_ADMIN_HOST puts it (it probed GATEWAY_HOST)', async (t) => {
  const at = listeners({ GATEWAY_HOST: '0.0.0.0', GATEWAY_ADMIN_HOST: '127.0.0.2', GATEWAY_ADMIN_PORT: '9190' })
  t.same(at.get('GATEWAY_ADMIN_PORT'), { host: '127.0.0.2', port: 9190 })
  t.same(at.get('GATEWAY_PORT'), { host: '0.0.0.0', port: 8080 })
  t.same(listeners({ GATEWAY_HOST: '0.0.0.0' }).get('GATEWAY_ADMIN_PORT'), { host: '127.0.0.1', port: 8090 },
    'unset, the admin listener stays on the gateway\'s default admin host, as the gateway does')
})
