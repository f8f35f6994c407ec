import Fastify, { type FastifyInstance } from 'fastify'
import t from 'tap'
import jwksAuth, { type JwksAuthOptions } from '@portcullis/jwks-auth'
import { rsaKey, startTestIssuer } from './helpers/issuer.js'

interface LogLine { event?: string, reason?: string }

async function build (opts: JwksAuthOptions, lines: LogLine[]): Promise<FastifyInstance> {
  const app = Fastify({ logger: { level: 'info', stream: { write: (s: string) => { lines.push(JSON.parse(s) as LogLine) } } } })
  await app.register(jwksAuth, opts)
  app.get('/me', async (req) => ({ iss: req.user?.iss, sub: req.user?.sub }))
  await app.ready()
  await app.jwksAuth.refresh()
  return app
}

async function call (app: FastifyInstance, lines: LogLine[], token: string): Promise<{ status: number, reason?: string }> {
  const before = lines.length
  const res = await app.inject({ url: '/me', headers: { authorization: `Bearer ${token}` } })
  return { status: res.statusCode, reason: lines.slice(before).find((l) => l.event === 'auth_failure')?.reason }
}

t.test('several issuers: each token is checked against its own issuer keys, audience and algorithms', async (t) => {
  const a = await startTestIssuer({ keys: [rsaKey({ label: 'iss-a' })], audience: 'api-a' })
  const b = await startTestIssuer({ keys: [rsaKey({ label: 'iss-b', alg: 'PS256' })], audience: 'api-b' })
  t.teardown(() => a.close())
  t.teardown(() => b.close())
  const lines: LogLine[] = []
  const app = await build({
    issuers: [
      { issuer: a.url, audience: 'api-a' },
      { issuer: b.url, audience: ['api-b', 'api-b2'], algorithms: ['PS256'] }
    ]
  }, lines)
  t.teardown(() => app.close())
  t.ok(app.jwksAuth.isReady(), 'both JWKS fetched')

  t.same(await call(app, lines, a.sign()), { status: 200, reason: undefined })
  t.same(await call(app, lines, b.sign({}, { alg: 'PS256' })), { status: 200, reason: undefined }, 'PS256 pinned for issuer b verifies')
  t.same(await call(app, lines, b.sign({ aud: 'api-b2' }, { alg: 'PS256' })), { status: 200, reason: undefined })

  t.same(await call(app, lines, a.sign({ aud: 'api-b' })), { status: 401, reason: 'bad_audience' }, "a's token with b's audience")
  t.same(await call(app, lines, b.sign({}, { alg: 'RS256' })), { status: 401, reason: 'alg_not_allowed' }, 'RS256 is not pinned for b')
  t.same(await call(app, lines, a.sign({}, { alg: 'PS256' })), { status: 401, reason: 'alg_not_allowed' }, 'PS256 is not pinned for a')
  // b's key, b's kid, but claiming to come from a: a's key map has no such kid.
  t.same(await call(app, lines, b.sign({ iss: a.url, aud: 'api-a' }, { alg: 'RS256' })), { status: 401, reason: 'unknown_kid' })
  // a's kid on a token claiming b: b's key map does not hold a's key.
  t.same(await call(app, lines, a.sign({ iss: b.url, aud: 'api-b' }, { alg: 'PS256' })), { status: 401, reason: 'unknown_kid' })
})

t.test('a key whose JWK names an alg only verifies that alg', async (t) => {
  const key = rsaKey({ label: 'iss-a' })
  const pinned = { ...key, jwk: { ...key.jwk, alg: 'RS256' } }
  const issuer = await startTestIssuer({ keys: [pinned] })
  t.teardown(() => issuer.close())
  const lines: LogLine[] = []
  const app = await build({ issuers: [{ issuer: issuer.url, audience: 'portcullis', algorithms: ['RS256', 'RS512'] }] }, lines)
  t.teardown(() => app.close())
  t.equal((await call(app, lines, issuer.sign({}, { key: pinned }))).status, 200)
  t.same(await call(app, lines, issuer.sign({}, { key: pinned, alg: 'RS512' })), { status: 401, reason: 'alg_not_allowed' },
    'RS512 is allowed for the issuer, but not for a key published as RS256')
})

t.test('requiredClaims and clockTolerance', async (t) => {
  const issuer = await startTestIssuer()
  t.teardown(() => issuer.close())
  const lines: LogLine[] = []
  const clock = { ms: Date.now() }
  const app = await build({
    issuers: [{ issuer: issuer.url, audience: 'portcullis' }],
    requiredClaims: ['jti', 'role'],
    clockTolerance: 10,
    now: () => clock.ms
  }, lines)
  t.teardown(() => app.close())
  const now = Math.floor(clock.ms / 1000)
  t.equal((await call(app, lines, issuer.sign({ role: 'user' }, { now }))).status, 200)
  t.same(await call(app, lines, issuer.sign({}, { now })), { status: 401, reason: 'invalid_claims' }, 'role is required')
  t.same(await call(app, lines, issuer.sign({ role: 'user', jti: undefined }, { now })), { status: 401, reason: 'invalid_claims' }, 'jti is required')
  const edge = issuer.sign({ role: 'user', exp: now - 5 }, { now: now - 100 })
  t.equal((await call(app, lines, edge)).status, 200, 'expired 5 s ago passes with 10 s tolerance')
  clock.ms += 6000
  t.same(await call(app, lines, edge), { status: 401, reason: 'expired' }, 'past the tolerance it fails, even from the cache')
  t.equal((await call(app, lines, issuer.sign({ role: 'user', nbf: now + 15 }, { now }))).status, 200, 'nbf 9 s ahead (after +6 s) is within tolerance')
  t.same(await call(app, lines, issuer.sign({ role: 'user', nbf: now + 30 }, { now })), { status: 401, reason: 'not_yet_valid' })
})

t.test('an endless JWKS body is cut off at the size limit: no keys, no unbounded buffering', async (t) => {
  const { createServer } = await import('node:http')
  let sent = 0
  const srv = createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' })
    res.write('{"keys":[')
    const chunk = Buffer.alloc(64 * 1024, 0x20) // whitespace, valid inside a JSON array
    const pump = (): void => {
      // Stop after 64 MiB at most: the client is expected to hang up long before that.
      let ok = true
      while (ok && sent < 64 * 1024 * 1024) {
        ok = res.write(chunk)
        sent += chunk.length
      }
      if (sent < 64 * 1024 * 1024) res.once('drain', pump)
      else res.end(']}')
    }
    pump()
  })
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => { srv.closeAllConnections(); srv.close(() => resolve()) }))
  const port = (srv.address() as { port: number }).port
  const issuer = `http://127.0.0.1:${port}`
  const lines: LogLine[] = []
  const app = await build({ issuers: [{ issuer, audience: 'portcullis' }] }, lines)
  t.teardown(() => app.close())
  t.notOk(app.jwksAuth.isReady(), 'an oversize JWKS is not a usable key set')
  t.ok(sent < 32 * 1024 * 1024, `the server was cut off early (kernel socket buffers aside) (${sent} bytes sent)`)
})
