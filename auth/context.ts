import { randomUUID } from 'node:crypto'
import type { FastifyReply } from 'fastify'
import type { RateLimitStore } from '@portcullis/rate-limit'
import type { ClientStore } from '../store/clients.js'
import type { RefreshStore } from '../store/refresh.js'
import type { UserStore } from '../store/users.js'
import type { AuthConfig } from './config.js'
import type { AuthMetrics } from './metrics.js'
import type { Signer } from './signer.js'

/** Everything the routes need, passed to each route plugin as its options. */
export interface AuthContext {
  config: AuthConfig
  users: UserStore
  clients: ClientStore
  refresh: RefreshStore
  signer: Signer
  metrics: AuthMetrics
  /** Login attempts per IP and per username (in memory, or Redis with REDIS_URL). */
  loginCounters: RateLimitStore
  /** Clock in epoch ms (tests inject one). */
  now: () => number
}

export interface AccessTokenInput {
  sub: string
  /** @defaultValue config.audience */
  aud?: string
  role?: string
  permissions?: string[]
  /** Space-separated; client-credentials tokens only. */
  scope?: string
}

export interface IssuedAccessToken {
  accessToken: string
  expiresIn: number
  kid: string
  jti: string
}

/**
 * Builds and signs an access token. Claims: iss, sub, aud, iat, nbf, exp, jti, then role and
 * permissions (users) or scope (service clients), as agreed in the contracts.
 */
export function issueAccessToken (ctx: AuthContext, input: AccessTokenInput): IssuedAccessToken {
  const iat = Math.floor(ctx.now() / 1000)
  const jti = randomUUID()
  const claims: Record<string, unknown> = {
    iss: ctx.config.issuer,
    sub: input.sub,
    aud: input.aud ?? ctx.config.audience,
    iat,
    nbf: iat,
    exp: iat + ctx.config.accessTokenTtl,
    jti
  }
  if (input.role !== undefined) claims.role = input.role
  if (input.permissions !== undefined) claims.permissions = input.permissions
  if (input.scope !== undefined && input.scope !== '') claims.scope = input.scope
  const { token, kid } = ctx.signer.sign(claims)
  return { accessToken: token, expiresIn: ctx.config.accessTokenTtl, kid, jti }
}

/** RFC 6749 section 5.1: token responses are never cached. */
export function noStore (reply: FastifyReply): void {
  reply.header('cache-control', 'no-store').header('pragma', 'no-cache')
}
