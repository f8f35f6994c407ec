import type { FastifyPluginAsync, FastifyRequest } from 'fastify'
import type { RotateFailure } from '../../store/refresh.js'
import { issueAccessToken, noStore, revocationFor, type AuthContext, type IssuedAccessToken } from '../context.js'
import { InvalidRefreshTokenError, NoSigningKeyError } from '../errors.js'
import { refreshBody, type RefreshBody } from './schemas.js'

export interface TokenPair {
  access_token: string
  token_type: 'Bearer'
  expires_in: number
  refresh_token: string
}

/**
 * Rotates a refresh token and signs a new access token for its user (shared by /auth/refresh and
 * the refresh_token grant of /oauth/token). Re-use of a rotated token is a security event: the
 * store has revoked the family; it is logged and counted here.
 */
export async function exchangeRefreshToken (ctx: AuthContext, req: FastifyRequest, token: string): Promise<TokenPair | RotateFailure> {
  if (!ctx.signer.ready) throw new NoSigningKeyError()
  // The user is read first and the access token signed inside the rotation's transaction: a failure
  // (no usable key, a store error) leaves the presented token unspent, so the client's retry is not
  // mistaken for re-use (which would revoke the family).
  const subject = await ctx.refresh.subjectOf(token)
  const user = subject !== null ? await ctx.users.getById(subject) : null
  let access: IssuedAccessToken | undefined
  const r = await ctx.refresh.rotate(token, (next) => {
    if (user !== null && next.subject === user.id) access = issueAccessToken(ctx, { sub: user.id, role: user.role, permissions: user.permissions, sid: next.familyId })
  })
  if (!r.ok) {
    ctx.metrics.loginFailures.inc({ reason: `refresh_${r.reason}` })
    if (r.reason === 'reused') {
      ctx.metrics.refreshReuse.inc()
      req.log.warn({ event: 'refresh_token_reuse', security: true, family: r.familyId, sub: r.subject, ip: req.ip },
        'an already-rotated refresh token was presented: its family is revoked')
      // and the session's access tokens with it, at every verifier
      if (r.familyId !== undefined) await ctx.revocations.record([revocationFor(ctx, 'sid', r.familyId, 'reuse')])
    } else {
      req.log.info({ event: 'auth_failure', reason: `refresh_${r.reason}`, family: r.familyId, ip: req.ip }, 'refresh refused')
    }
    return r.reason
  }
  if (user === null || access === undefined) {
    await ctx.refresh.revoke(r.token, 'subject_removed')
    ctx.metrics.loginFailures.inc({ reason: 'refresh_revoked' })
    return 'revoked'
  }
  ctx.metrics.tokensIssued.inc({ grant: 'refresh_token' })
  req.log.info({ event: 'auth_success', grant: 'refresh_token', sub: user.id, kid: access.kid, ip: req.ip }, 'refresh')
  return { access_token: access.accessToken, token_type: 'Bearer', expires_in: access.expiresIn, refresh_token: r.token }
}

/** POST /auth/refresh (a new pair for a refresh token) and POST /auth/logout (revokes its family and that session's access tokens). */
const refresh: FastifyPluginAsync<AuthContext> = async (app, ctx) => {
  app.post<{ Body: RefreshBody }>('/auth/refresh', { schema: { body: refreshBody } }, async (req, reply) => {
    const result = await exchangeRefreshToken(ctx, req, req.body.refresh_token)
    if (typeof result === 'string') throw new InvalidRefreshTokenError()
    noStore(reply)
    return result
  })

  // Always 204 for a well-formed request, like RFC 7009 revocation: the answer says nothing about the token.
  app.post<{ Body: RefreshBody }>('/auth/logout', { schema: { body: refreshBody } }, async (req, reply) => {
    const family = await ctx.refresh.revokeFamily(req.body.refresh_token, 'logout')
    // the session's access tokens are refused at every verifier too (within about a second)
    if (family !== null) await ctx.revocations.record([revocationFor(ctx, 'sid', family, 'logout')])
    req.log.info({ event: 'logout', revoked: family !== null, ip: req.ip }, 'logout')
    return reply.code(204).send()
  })
}

export default refresh
