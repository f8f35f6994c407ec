import { setTimeout as delay } from 'node:timers/promises'
import { createLocalJWKSet, decodeProtectedHeader, jwtVerify, type JSONWebKeySet } from 'jose'
import t from 'tap'
import { keySecretsFromList } from '../store/crypto.js'
import { openKeyStore } from '../store/keys.js'
import { authFixture, type AuthFixture } from './helpers/auth-fixture.js'
import { testBackends } from './helpers/backends.js'

async function clientToken (f: AuthFixture, secret: string): Promise<string> {
  const res = await f.service.app.inject({ method: 'POST', url: '/oauth/token', payload: { grant_type: 'client_credentials', client_id: 'svc-a', client_secret: secret } })
  if (res.statusCode !== 200) throw new Error(`token: ${res.statusCode} ${res.body}`)
  return res.json().access_token as string
}

async function servedJwks (f: AuthFixture): Promise<JSONWebKeySet> {
  return (await f.service.app.inject({ url: '/.well-known/jwks.json' })).json() as JSONWebKeySet
}

for (const backend of await testBackends()) {
  t.test(backend.name, { skip: backend.skip }, async (t) => {
    const b = await backend.open()
    // The service polls every 250 ms (AUTH_KEY_POLL_INTERVAL); SIGNER_PROPAGATION is the default 5 s.
    const f = await authFixture(b, { env: { AUTH_KEY_POLL_INTERVAL: '250ms' } })
    t.teardown(async () => { await f.service.close(); await b.cleanup() })
    const { clientSecret } = await f.clients.add({ clientId: 'svc-a', scopes: ['a'] })
    // The rotation worker, as another process would be: its own connection to the same store.
    const worker = await openKeyStore(b.reopen(), { secrets: keySecretsFromList(f.secrets) })
    const verify = async (token: string): Promise<unknown> => (await jwtVerify(token, createLocalJWKSet(await servedJwks(f)), {
      issuer: f.config.issuer, audience: f.config.audience, algorithms: ['RS256']
    })).payload

    const first = await clientToken(f, clientSecret)
    const kid1 = decodeProtectedHeader(first).kid!

    await t.test('a pending key is published but never signs', async (t) => {
      const pending = await worker.rotateNow({ activateNow: false })
      t.equal(pending.state, 'pending')
      await f.service.signer.refresh()
      t.ok((await servedJwks(f)).keys.some((k) => k.kid === pending.kid), 'pre-published in the JWKS')
      t.equal(decodeProtectedHeader(await clientToken(f, clientSecret)).kid, kid1, 'still signing with the active key')
    })

    await t.test('after the worker activates a key, new tokens carry its kid within 5 s; old tokens still verify', async (t) => {
      const activated = await worker.rotateNow({ activateNow: true })
      t.not(activated.kid, kid1)
      // Measured from the activation time the worker recorded in the store.
      const started = activated.activatesAt
      let kid: string | undefined
      let token = ''
      while (Date.now() - started < 10_000) {
        token = await clientToken(f, clientSecret)
        kid = decodeProtectedHeader(token).kid
        if (kid === activated.kid) break
        await delay(20)
      }
      const elapsed = Date.now() - started
      t.equal(kid, activated.kid, 'new tokens are signed with the newly activated key')
      t.ok(elapsed < 5000, `noticed after ${elapsed} ms (< 5000)`)
      t.comment(`new kid observed ${elapsed} ms after activation`)
      t.ok(await verify(token), 'the new token verifies (jose, served JWKS)')
      t.ok(await verify(first), 'a token signed with the now retired key still verifies')
      const jwks = await servedJwks(f)
      t.same(new Set(jwks.keys.map((k) => k.kid)), new Set([kid1, activated.kid]), 'JWKS = retired + active')
      for (const k of jwks.keys) t.same(Object.keys(k).sort(), ['alg', 'e', 'kid', 'kty', 'n', 'use'], 'public members only')
    })

    await t.test('a revoked key stops signing and leaves the JWKS; its tokens stop verifying', async (t) => {
      const signedWithActive = await clientToken(f, clientSecret)
      const revokedKid = decodeProtectedHeader(signedWithActive).kid!
      const r = await worker.revoke(revokedKid)
      await f.service.signer.refresh()
      const after = await clientToken(f, clientSecret)
      t.equal(decodeProtectedHeader(after).kid, r.replacement, 'signs with the replacement')
      t.notOk((await servedJwks(f)).keys.some((k) => k.kid === revokedKid), 'revoked key unpublished')
      await t.rejects(verify(signedWithActive), { code: 'ERR_JWKS_NO_MATCHING_KEY' })
    })
  })
}
