import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify'
import { createPublicKey, verify as verifySignature, type JsonWebKey, type KeyObject } from 'node:crypto'
import { issueAccessToken, noStore, revocationFor, type AuthContext } from '../context.js'
import {
  InvalidClientError, InvalidGrantError, InvalidRequestError, InvalidScopeError, NoSigningKeyError, UnsupportedGrantTypeError
} from '../errors.js'
import { exchangeRefreshToken } from './refresh.js'
import { MAX_REFRESH_TOKEN_LENGTH, revokeBody, tokenBody, type RevokeBody, type TokenBody } from './schemas.js'

export const GRANT_TYPES = ['client_credentials', 'refresh_token'] as const

/** application/x-www-form-urlencoded, as RFC 6749 requires; a repeated parameter is invalid_request. */
function parseForm (_req: FastifyRequest, body: string | Buffer, done: (err: Error | null, body?: unknown) => void): void {
  const params = new URLSearchParams(body.toString())
  // A Map, then Object.fromEntries: a "__proto__" parameter stays a plain own property.
  const out = new Map<string, string>()
  for (const [k, v] of params) {
    if (out.has(k)) return done(new InvalidRequestError(`parameter "${k}" is repeated`))
    // RFC 6749 section 3.1: parameters sent without a value are treated as omitted.
    if (v !== '') out.set(k, v)
  }
  done(null, Object.fromEntries(out))
}

interface ClientCredentials { clientId: string, clientSecret: string, basic: boolean }

/** RFC 6749 section 2.3.1: HTTP Basic (form-urlencoded id and secret) or client_id + client_secret in the body, not both. */
function clientCredentials (req: FastifyRequest<{ Body: TokenBody }>): ClientCredentials | null {
  const header = req.headers.authorization
  const inBody = req.body.client_id !== undefined || req.body.client_secret !== undefined
  if (header !== undefined && /^basic /i.test(header)) {
    if (inBody) throw new InvalidRequestError('use one client authentication method: HTTP Basic or body parameters, not both')
    const decoded = Buffer.from(header.slice(6).trim(), 'base64').toString('utf8')
    const colon = decoded.indexOf(':')
    if (colon < 0) return null
    try {
      return {
        clientId: decodeURIComponent(decoded.slice(0, colon).replace(/\+/g, ' ')),
        clientSecret: decodeURIComponent(decoded.slice(colon + 1).replace(/\+/g, ' ')),
        basic: true
      }
    } catch {
      return null
    }
  }
  if (req.body.client_id === undefined || req.body.client_secret === undefined) return null
  return { clientId: req.body.client_id, clientSecret: req.body.client_secret, basic: false }
}

function refuseClient (reply: FastifyReply, basic: boolean): never {
  // RFC 6749 section 5.2: a client that tried HTTP Basic gets the challenge back.
  if (basic) reply.header('www-authenticate', 'Basic realm="portcullis", charset="UTF-8"')
  throw new InvalidClientError()
}

/** Public keys of the JWKS this service publishes, by kid (rebuilt when the JWKS changes). */
function publishedKeys (ctx: AuthContext, cache: { etag?: string, keys: Map<string, KeyObject> }): Map<string, KeyObject> {
  const jwks = ctx.signer.jwks
  if (jwks === null) return new Map()
  if (cache.etag !== jwks.etag) {
    const doc = JSON.parse(jwks.body) as { keys: Array<JsonWebKey & { kid: string }> }
    cache.keys = new Map(doc.keys.map((k) => [k.kid, createPublicKey({ key: k, format: 'jwk' })]))
    cache.etag = jwks.etag
  }
  return cache.keys
}

/**
 * The jti and exp of an access token this service signed and that is still valid, else null: only
 * such a token is worth revoking (anything else is refused by verifiers already, and must not fill
 * the revocation set).
 */
function ownAccessToken (ctx: AuthContext, keys: Map<string, KeyObject>, token: string): { jti: string, exp: number } | null {
  const parts = token.split('.')
  if (parts.length !== 3) return null
  try {
    const header = JSON.parse(Buffer.from(parts[0]!, 'base64url').toString('utf8')) as { alg?: unknown, kid?: unknown }
    const key = typeof header.kid === 'string' ? keys.get(header.kid) : undefined
    if (header.alg !== 'RS256' || key === undefined) return null
    if (!verifySignature('sha256', Buffer.from(`${parts[0]!}.${parts[1]!}`), key, Buffer.from(parts[2]!, 'base64url'))) return null
    const claims = JSON.parse(Buffer.from(parts[1]!, 'base64url').toString('utf8')) as { iss?: unknown, jti?: unknown, exp?: unknown }
    if (claims.iss !== ctx.config.issuer || typeof claims.jti !== 'string' || typeof claims.exp !== 'number') return null
    if (claims.exp * 1000 + ctx.config.clockSkew * 1000 <= ctx.now()) return null
    return { jti: claims.jti, exp: claims.exp }
  } catch {
    return null
  }
}

/** POST /oauth/token: client_credentials and refresh_token grants; POST /oauth/revoke (RFC 7009); form-encoded or JSON bodies. */
const token: FastifyPluginAsync<AuthContext> = async (app, ctx) => {
  app.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string' }, parseForm)

  // RFC 7009: a refresh token revokes its session (the family and its access tokens), an access
  // token of ours revokes itself (by jti); 200 whatever the token was, so the answer tells nothing.
  // The token itself is the credential, as for /auth/logout: clients here are public clients.
  const keyCache = { keys: new Map<string, KeyObject>() }
  app.post<{ Body: RevokeBody }>('/oauth/revoke', { schema: { body: revokeBody } }, async (req, reply) => {
    const t = req.body.token
    const access = t.includes('.') ? ownAccessToken(ctx, publishedKeys(ctx, keyCache), t) : null
    if (access !== null) {
      await ctx.revocations.record([revocationFor(ctx, 'jti', access.jti, 'oauth_revoke', access.exp)])
      req.log.info({ event: 'token_revoked', kind: 'access_token', ip: req.ip }, 'access token revoked')
    } else if (t.length <= MAX_REFRESH_TOKEN_LENGTH) {
      const family = await ctx.refresh.revokeFamily(t, 'oauth_revoke')
      if (family !== null) {
        await ctx.revocations.record([revocationFor(ctx, 'sid', family, 'oauth_revoke')])
        req.log.info({ event: 'token_revoked', kind: 'refresh_token', ip: req.ip }, 'session revoked')
      }
    }
    noStore(reply)
    return reply.code(200).send()
  })

  app.post<{ Body: TokenBody }>('/oauth/token', { schema: { body: tokenBody } }, async (req, reply) => {
    const grant = req.body.grant_type
    if (grant === 'client_credentials') {
      if (!ctx.signer.ready) throw new NoSigningKeyError()
      const creds = clientCredentials(req)
      if (creds === null) {
        ctx.metrics.loginFailures.inc({ reason: 'invalid_client' })
        refuseClient(reply, /^basic /i.test(req.headers.authorization ?? ''))
      }
      const client = await ctx.clients.verify(creds.clientId, creds.clientSecret)
      if (client === null) {
        ctx.metrics.loginFailures.inc({ reason: 'invalid_client' })
        req.log.warn({ event: 'auth_failure', reason: 'invalid_client', client_id: creds.clientId, ip: req.ip }, 'client authentication failed')
        refuseClient(reply, creds.basic)
      }
      const requested = req.body.scope?.split(' ').filter((s) => s !== '')
      const notAllowed = requested?.find((s) => !client.scopes.includes(s))
      if (notAllowed !== undefined) {
        ctx.metrics.loginFailures.inc({ reason: 'invalid_scope' })
        throw new InvalidScopeError(`scope "${notAllowed}" is not granted to this client`)
      }
      const scope = [...new Set(requested ?? client.scopes)].join(' ')
      const access = issueAccessToken(ctx, { sub: client.clientId, aud: client.audience ?? ctx.config.audience, scope })
      ctx.metrics.tokensIssued.inc({ grant: 'client_credentials' })
      req.log.info({ event: 'auth_success', grant, sub: client.clientId, kid: access.kid, ip: req.ip }, 'client credentials')
      noStore(reply)
      return { access_token: access.accessToken, token_type: 'Bearer', expires_in: access.expiresIn, ...(scope !== '' ? { scope } : {}) }
    }
    if (grant === 'refresh_token') {
      if (req.body.refresh_token === undefined) throw new InvalidRequestError('refresh_token is required for grant_type refresh_token')
      const result = await exchangeRefreshToken(ctx, req, req.body.refresh_token)
      if (typeof result === 'string') throw new InvalidGrantError('the refresh token is invalid, expired or revoked')
      noStore(reply)
      return result
    }
    throw new UnsupportedGrantTypeError(grant)
  })
}

export default token
