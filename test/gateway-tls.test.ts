import { spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { buildGateway } from '../gateway/server.js'
import { parseGatewayConfig } from '../gateway/config.js'
import pino from 'pino'
import { runtimeOptions, settingsFromEnv } from '../gateway/main.js'
import { GatewayRuntime } from '../gateway/runtime.js'
import { echoUpstream, rawRequest } from './helpers/upstream.js'

const haveOpenssl = spawnSync('openssl', ['version']).status === 0

t.test('HTTPS with a self-signed certificate made here; HSTS on every response', { skip: haveOpenssl ? false : 'openssl binary not installed' }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-tls-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const cert = join(dir, 'cert.pem')
  const key = join(dir, 'key.pem')
  const r = spawnSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '1',
    '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1'], { stdio: 'pipe' })
  t.equal(r.status, 0, 'certificate generated')

  const settings = settingsFromEnv({ GATEWAY_TLS_CERT: cert, GATEWAY_TLS_KEY: key, GATEWAY_HSTS_MAX_AGE: '1d' })
  t.ok(settings.tls, 'TLS configured from GATEWAY_TLS_CERT/KEY')
  const up = await echoUpstream()
  const gw = await buildGateway({
    config: parseGatewayConfig({ routes: [{ prefix: '/p', upstream: up.url, auth: false }] }, 'test'),
    tls: settings.tls,
    hstsMaxAge: settings.hstsMaxAge,
    logger: false
  })
  await gw.app.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(async () => { await gw.close(); await up.close() })
  const addr = gw.app.server.address()
  const base = `https://127.0.0.1:${typeof addr === 'object' && addr !== null ? addr.port : 0}`

  const ok = await rawRequest(base, '/p/x', { ca: readFileSync(cert) })
  t.equal(ok.status, 200)
  t.equal(ok.headers['strict-transport-security'], 'max-age=86400; includeSubDomains')
  t.equal(ok.json<{ headers: Record<string, string> }>().headers['x-forwarded-proto'], 'https', 'the upstream learns the client used TLS')
  const notFound = await rawRequest(base, '/nope', { ca: readFileSync(cert) })
  t.equal(notFound.status, 404)
  t.equal(notFound.headers['strict-transport-security'], 'max-age=86400; includeSubDomains', 'HSTS on errors too')
  await t.rejects(rawRequest(base, '/p/x'), 'an untrusted certificate is refused by the client (it really is TLS)')

  // the same through the runtime `portcullis gateway` runs (its own HTTPS listener, reloadable config)
  writeFileSync(join(dir, 'routes.json'), JSON.stringify({ routes: [{ name: 'p', prefix: '/p', upstream: up.url, auth: false }] }))
  const rt = await GatewayRuntime.start({ ...runtimeOptions({ ...settings, configPath: join(dir, 'routes.json') }, {}), logger: pino({ level: 'silent' }) })
  t.teardown(() => rt.close())
  await rt.listen('127.0.0.1', 0)
  const rtBase = `https://127.0.0.1:${(rt.server.address() as { port: number }).port}`
  const viaRuntime = await rawRequest(rtBase, '/p/x', { ca: readFileSync(cert) })
  t.equal(viaRuntime.status, 200, 'runtime: HTTPS')
  t.equal(viaRuntime.headers['strict-transport-security'], 'max-age=86400; includeSubDomains', 'runtime: HSTS')
  t.equal(viaRuntime.json<{ headers: Record<string, string> }>().headers['x-forwarded-proto'], 'https', 'runtime: the upstream learns the client used TLS')
  await t.rejects(rawRequest(rtBase, '/p/x'), 'runtime: an untrusted certificate is refused (it really is TLS)')

  const plain = await buildGateway({ config: parseGatewayConfig({ routes: [{ prefix: '/p', upstream: up.url, auth: false }] }, 'test'), logger: false })
  t.teardown(() => plain.close())
  t.equal((await plain.app.inject({ url: '/p/x' })).headers['strict-transport-security'], undefined, 'no HSTS over plain HTTP')
})
