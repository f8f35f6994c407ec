import Fastify from 'fastify'
import t from 'tap'
import { clientCredentialsTokenSource } from '@portcullis/propagation'

/** A token endpoint that counts grants and answers slowly enough for callers to pile up. */
async function tokenEndpoint (t: { teardown: (fn: () => unknown) => void }, opts: { expiresIn: number, failFirst?: number }) {
  const state = { grants: 0, failures: opts.failFirst ?? 0, lastForm: {} as Record<string, string>, lastAuth: undefined as string | undefined }
  const app = Fastify()
  app.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string' }, (_req, body, done) => {
    done(null, Object.fromEntries(new URLSearchParams(body as string)))
  })
  app.post('/oauth/token', async (req, reply) => {
    state.lastForm = req.body as Record<string, string>
    state.lastAuth = req.headers.authorization
    await new Promise((resolve) => setTimeout(resolve, 20))
    if (state.failures > 0) {
      state.failures--
      return reply.code(503).send({ error: 'temporarily_unavailable' })
    }
    state.grants++
    return { access_token: `tok-${state.grants}`, token_type: 'Bearer', expires_in: opts.expiresIn }
  })
  const base = await app.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(() => app.close())
  return { url: `${base}/oauth/token`, state }
}

t.test('one grant for many concurrent callers, cached until shortly before expiry', async (t) => {
  const { url, state } = await tokenEndpoint(t, { expiresIn: 300 })
  let clock = 1_000_000
  const src = clientCredentialsTokenSource({ tokenUrl: url, clientId: 'order-service', clientSecret: 's3cret', scope: 'products:read', now: () => clock })

  const tokens = await Promise.all(Array.from({ length: 25 }, () => src.token()))
  t.equal(state.grants, 1, 'single-flight: 25 callers, one request')
  t.ok(tokens.every((x) => x === 'tok-1'))
  t.same(state.lastForm, { grant_type: 'client_credentials', scope: 'products:read', client_id: 'order-service', client_secret: 's3cret' })

  clock += 269_000 // 300 s lifetime, renewed 30 s before: still cached at 269 s
  t.equal(await src.token(), 'tok-1')
  t.equal(state.grants, 1)
  clock += 2_000 // 271 s: inside the renewal margin
  const renewed = await Promise.all([src.token(), src.token(), src.token()])
  t.same(renewed, ['tok-2', 'tok-2', 'tok-2'], 'renewed once, before expiry')
  t.equal(state.grants, 2)

  src.invalidate('tok-1') // a stale token: no effect
  t.equal(await src.token(), 'tok-2')
  src.invalidate('tok-2')
  t.equal(await src.token(), 'tok-3', 'an invalidated token is fetched anew')
})

t.test('short-lived tokens renew at half their lifetime; a failed grant is retried by the next caller', async (t) => {
  const { url, state } = await tokenEndpoint(t, { expiresIn: 10, failFirst: 1 })
  let clock = 0
  const src = clientCredentialsTokenSource({ tokenUrl: url, clientId: 'c', clientSecret: 's', clientAuth: 'basic', now: () => clock })
  const failed = await Promise.allSettled([src.token(), src.token()])
  t.same(failed.map((r) => r.status), ['rejected', 'rejected'], 'both waiters see the one failure')
  t.match(String((failed[0] as PromiseRejectedResult).reason), /503/)
  t.equal(await src.token(), 'tok-1', 'the next call tries again')
  t.equal(state.lastAuth, `Basic ${Buffer.from('c:s').toString('base64')}`, 'basic client authentication')
  t.notOk('client_secret' in state.lastForm, 'the secret is not also sent in the form')
  clock += 4_900
  t.equal(await src.token(), 'tok-1')
  clock += 200 // 5.1 s of a 10 s token: renew (margin capped at half the lifetime)
  t.equal(await src.token(), 'tok-2')
})
