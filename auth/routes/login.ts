import type { FastifyPluginAsync, FastifyRequest } from 'fastify'
import { clientKey, type RateLimitStore } from '@portcullis/rate-limit'
import { normalizeUsername } from '../../store/users.js'
import { issueAccessToken, noStore, type AuthContext } from '../context.js'
import { InvalidCredentialsError, LimiterUnavailableError, NoSigningKeyError, RateLimitedError } from '../errors.js'
import type { LoginFailure } from '../metrics.js'
import { loginBody, type LoginBody } from './schemas.js'

interface Count { exceeded: boolean, retryAfter: number }

/** One attempt on `key`'s fixed window: whether it is over `max`, and seconds until the window ends. */
function countAttempt (store: RateLimitStore, key: string, max: number, window: number): Promise<Count> {
  return new Promise((resolve, reject) => {
    store.incr(key, window, (err, hit) => {
      if (err !== null || hit === undefined) reject(err ?? new Error('no count'))
      else resolve({ exceeded: hit.current > max, retryAfter: Math.max(1, Math.ceil(hit.ttl / 1000)) })
    })
  })
}

/**
 * POST /auth/login. Brute force is limited twice, after the body is validated: per client IP and
 * per username (known or not, so the limit reveals nothing). Every attempt counts, success included:
 * the counters are atomic increments (one Lua script in Redis), never read-then-write. Counters live
 * in this process (5000 keys, least recently used forgotten first), or in Redis when REDIS_URL is
 * set (shared by every replica; unreachable = 503), under `portcullis-auth-login:ip:<ip, IPv6 by /64>` and
 * `portcullis-auth-login:user:<username>`.
 */
const login: FastifyPluginAsync<AuthContext> = async (app, ctx) => {
  const { login: limits } = ctx.config
  const byIp = (req: FastifyRequest): Promise<Count> => countAttempt(ctx.loginCounters, `ip:${clientKey(req.ip)}`, limits.ipMax, limits.ipWindow)
  const byUser = (req: FastifyRequest<{ Body: LoginBody }>): Promise<Count> =>
    countAttempt(ctx.loginCounters, `user:${normalizeUsername(req.body.username)}`, limits.userMax, limits.userWindow)

  app.post<{ Body: LoginBody }>('/auth/login', {
    schema: { body: loginBody },
    preHandler: async (req, reply) => {
      let checks: Array<[Count, LoginFailure]>
      try {
        checks = [[await byIp(req), 'rate_limited_ip'], [await byUser(req), 'rate_limited_user']]
      } catch (err) {
        // Fail closed: without counters, guesses would go uncounted.
        req.log.error({ err }, 'login counters unavailable')
        throw new LimiterUnavailableError()
      }
      for (const [r, reason] of checks) {
        if (r.exceeded) {
          ctx.metrics.loginFailures.inc({ reason })
          req.log.warn({ event: 'auth_failure', reason, username: normalizeUsername(req.body.username), ip: req.ip }, 'login rate limited')
          reply.header('retry-after', String(r.retryAfter))
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
    // the session first: its id (the refresh-token family) is the access token's `sid`
    const refresh = await ctx.refresh.issue(user.id)
    const access = issueAccessToken(ctx, { sub: user.id, role: user.role, permissions: user.permissions, sid: refresh.familyId })
    ctx.metrics.tokensIssued.inc({ grant: 'login' })
    req.log.info({ event: 'auth_success', sub: user.id, kid: access.kid, ip: req.ip }, 'login')
    noStore(reply)
    return { access_token: access.accessToken, token_type: 'Bearer', expires_in: access.expiresIn, refresh_token: refresh.token }
  })
}

export default login
