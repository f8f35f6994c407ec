import type { FastifyPluginAsync, FastifyRequest } from 'fastify'
import { normalizeUsername } from '../../store/users.js'
import { issueAccessToken, noStore, type AuthContext } from '../context.js'
import { InvalidCredentialsError, LimiterUnavailableError, NoSigningKeyError, RateLimitedError } from '../errors.js'
import type { LoginFailure } from '../metrics.js'
import { loginBody, type LoginBody } from './schemas.js'

/**
 * POST /auth/login. Brute force is limited twice through @fastify/rate-limit, after the body is
 * validated: per client IP and per username (known or not, so the limit reveals nothing). Every
 * attempt counts, success included: the counters are atomic increments, never read-then-write.
 * Counters live in this process (LocalStore, 5000 keys, least recently used forgotten first), or in
 * Redis when REDIS_URL is set (shared by every replica; unreachable = 503).
 */
const login: FastifyPluginAsync<AuthContext> = async (app, ctx) => {
  const { login: limits } = ctx.config
  const byIp = app.createRateLimit({
    max: limits.ipMax,
    timeWindow: limits.ipWindow,
    keyGenerator: (req: FastifyRequest) => `ip:${req.ip}`
  })
  const byUser = app.createRateLimit({
    max: limits.userMax,
    timeWindow: limits.userWindow,
    keyGenerator: (req: FastifyRequest) => `user:${normalizeUsername((req.body as LoginBody).username)}`
  })

  app.post<{ Body: LoginBody }>('/auth/login', {
    schema: { body: loginBody },
    preHandler: async (req, reply) => {
      let checks: Array<[Awaited<ReturnType<typeof byIp>>, LoginFailure]>
      try {
        checks = [[await byIp(req), 'rate_limited_ip'], [await byUser(req), 'rate_limited_user']]
      } catch (err) {
        // Fail closed: without counters, guesses would go uncounted.
        req.log.error({ err }, 'login counters unavailable')
        throw new LimiterUnavailableError()
      }
      for (const [r, reason] of checks) {
        if (!r.isAllowed && r.isExceeded) {
          ctx.metrics.loginFailures.inc({ reason })
          req.log.warn({ event: 'auth_failure', reason, username: normalizeUsername(req.body.username), ip: req.ip }, 'login rate limited')
          reply.header('retry-after', String(Math.max(1, r.ttlInSeconds)))
          throw new RateLimitedError()
        }
      }
    }
  }, async (req, reply) => {
    if (!ctx.signer.ready) throw new NoSigningKeyError()
    const { username, password } = req.body
    const user = await ctx.users.verify(username, password)
    if (user === null) {
      ctx.metrics.loginFailures.inc({ reason: 'invalid_credentials' })
      req.log.warn({ event: 'auth_failure', reason: 'invalid_credentials', username: normalizeUsername(username), ip: req.ip }, 'login refused')
      throw new InvalidCredentialsError()
    }
    const access = issueAccessToken(ctx, { sub: user.id, role: user.role, permissions: user.permissions })
    const refresh = await ctx.refresh.issue(user.id)
    ctx.metrics.tokensIssued.inc({ grant: 'login' })
    req.log.info({ event: 'auth_success', sub: user.id, kid: access.kid, ip: req.ip }, 'login')
    noStore(reply)
    return { access_token: access.accessToken, token_type: 'Bearer', expires_in: access.expiresIn, refresh_token: refresh.token }
  })
}

export default login
