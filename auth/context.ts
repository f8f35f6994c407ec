import { randomUUID } from 'node:crypto'
import type { FastifyReply } from 'fastify'
import type { RateLimitStore } from '@portcullis/rate-limit'
import type { ClientStore } from '../store/clients.js'
import type { RefreshStore } from '../store/refresh.js'
import { revocationUntil, type NewRevocation, type RevocationKind } from '../store/revocations.js'
import type { RevocationHub } from './revocations.js'
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
  /** Revocations: recorded in the store and pushed to the verifiers' feeds. */
  revocations: RevocationHub
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
  /** Session id: the refresh-token family the token was issued for (user tokens). */
  sid?: string
}

export interface IssuedAccessToken {
  accessToken: string
  expiresIn: number
  kid: string
  jti: string
}

/**
 * Builds and signs an access token. Claims: iss, sub, aud, iat, nbf, exp, jti, then role and
 * permissions (users) or scope (service clients), as agreed in the contracts, and `sid` (the
 * session: the refresh-token family) for tokens issued at login or refresh.
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
  if (input.sid !== undefined) claims.sid = input.sid
  const { token, kid } = ctx.signer.sign(claims)
  return { accessToken: token, expiresIn: ctx.config.accessTokenTtl, kid, jti }
}

/** RFC 6749 section 5.1: token responses are never cached. */
export function noStore (reply: FastifyReply): void {
  reply.header('cache-control', 'no-store').header('pragma', 'no-cache')
}

/**
 * A revocation of `kind` (session, user or token) kept until every token it can match has expired:
 * an access token lives ACCESS_TOKEN_TTL, and verifiers accept it CLOCK_SKEW past `exp`.
 */
export function revocationFor (ctx: AuthContext, kind: Exclude<RevocationKind, 'kid'>, value: string, reason: string, exp?: number): NewRevocation {
  return { kind, value, reason, expiresAt: revocationUntil(ctx.now(), ctx.config.accessTokenTtl, ctx.config.clockSkew, exp) }
}
