import type { FastifyPluginAsync } from 'fastify'
import type { AuthContext } from '../context.js'
import { NoSigningKeyError } from '../errors.js'
import { GRANT_TYPES } from './token.js'

/** True when an If-None-Match header names `etag` (weak comparison, RFC 9110 section 13.1.2). */
export function etagMatches (header: string | undefined, etag: string): boolean {
  if (header === undefined) return false
  if (header.trim() === '*') return true
  return header.split(',').some((t) => t.trim().replace(/^W\//, '') === etag)
}

/** GET /.well-known/jwks.json (pending + active + retired public keys) and the discovery document. */
const wellKnown: FastifyPluginAsync<AuthContext> = async (app, ctx) => {
  const cacheControl = `public, max-age=${ctx.config.jwksMaxAge}`

  app.get('/.well-known/jwks.json', async (req, reply) => {
    if (ctx.signer.jwks === null) await ctx.signer.refresh()
    const jwks = ctx.signer.jwks
    if (jwks === null) throw new NoSigningKeyError()
    reply.header('cache-control', cacheControl).header('etag', jwks.etag)
    if (etagMatches(req.headers['if-none-match'], jwks.etag)) return reply.code(304).send()
    return reply.type('application/json; charset=utf-8').send(jwks.body)
  })

  const discovery = {
    issuer: ctx.config.issuer,
    jwks_uri: `${ctx.config.issuer}/.well-known/jwks.json`,
    token_endpoint: `${ctx.config.issuer}/oauth/token`,
    grant_types_supported: [...GRANT_TYPES],
    token_endpoint_auth_methods_supported: ['client_secret_basic', 'client_secret_post'],
    response_types_supported: ['token'],
    subject_types_supported: ['public'],
    id_token_signing_alg_values_supported: ['RS256'],
    claims_supported: ['iss', 'sub', 'aud', 'exp', 'iat', 'nbf', 'jti', 'role', 'permissions', 'scope']
  }
  app.get('/.well-known/openid-configuration', async (_req, reply) => {
    reply.header('cache-control', cacheControl)
    return discovery
  })
}

export default wellKnown
