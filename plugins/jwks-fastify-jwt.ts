import type { FastifyJWTOptions } from '@fastify/jwt'
import type { FastifyRequest } from 'fastify'
import type { ResolvedOptions } from './auth-options.js'
import { AuthFailure, httpErrorFor } from './auth-errors.js'
import { pemOf } from './jwks-keys.js'
import type { IssuerKeys } from './jwks-refresher.js'
import { decodeJws, type TokenVerifier, type VerifiedUser } from './jwks-verify.js'

interface Decoded { header: Record<string, unknown>, payload: Record<string, unknown> }

// The same Bearer syntax as the plugin's own hook (RFC 6750 b64token, case-insensitive scheme).
const BEARER = /^bearer +([A-Za-z0-9\-._~+/]+=*) *$/i

/**
 * The token for @fastify/jwt, refused with our 401 when it is not a structurally valid JWS: left to
 * fast-jwt's decoder, a payload that is not a JSON object is an error without a status (a 500).
 */
function extractToken (request: FastifyRequest): string {
  const header = request.headers.authorization
  if (header === undefined || header === '') throw httpErrorFor('missing')
  const m = BEARER.exec(header)
  if (m === null) throw httpErrorFor('malformed')
  try {
    decodeJws(m[1]!)
  } catch (err) {
    throw httpErrorFor(err instanceof AuthFailure ? err.reason : 'malformed')
  }
  return m[1]!
}

function strings (v: unknown): string[] {
  return Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : []
}

/**
 * Options for @fastify/jwt so that `request.jwtVerify()` (its own, slower path without our token
 * cache or reason codes) still only trusts the allowlisted issuers' keys with the pinned algorithms,
 * audiences and required claims. The plugin's hook and `app.authenticate` do not use this path.
 */
export function jwtVerifyOptions (options: ResolvedOptions, issuers: Map<string, IssuerKeys>, tokens: TokenVerifier): FastifyJWTOptions {
  const algorithms = [...new Set(options.issuers.flatMap((i) => i.algorithms))]
  const audiences = [...new Set(options.issuers.flatMap((i) => i.audiences))]
  async function keyFor ({ header, payload }: Decoded): Promise<string> {
    const issuer = typeof payload.iss === 'string' ? issuers.get(payload.iss) : undefined
    if (issuer === undefined) throw new AuthFailure('bad_issuer')
    if (typeof header.alg !== 'string' || !(issuer.config.algorithms as string[]).includes(header.alg)) throw new AuthFailure('alg_not_allowed')
    const kid = header.kid
    if (typeof kid !== 'string' || kid === '' || kid.length > 256) throw new AuthFailure('malformed')
    if (!issuer.keys.has(kid)) await issuer.resolveMissing(kid)
    const entry = issuer.keys.get(kid)
    if (entry === undefined) throw new AuthFailure('unknown_kid')
    if (issuer.freshness(options.now()) === 'unavailable') throw new AuthFailure('jwks_unavailable')
    if (entry.alg !== undefined && entry.alg !== header.alg) throw new AuthFailure('alg_not_allowed')
    return pemOf(entry)
  }

  return {
    secret: {
      public: async (request: FastifyRequest, token: unknown) => {
        try {
          // The plugin's full verification first (crit, claim types, nbf/iat, canonical signature...):
          // fast-jwt alone accepts some of these and answers others with errors that become 500s.
          const raw = extractToken(request)
          if (tokens.cached(raw) === undefined) await tokens.verifyUncached(raw)
          return await keyFor(token as Decoded)
        } catch (err) {
          // A rejected key look-up must reach the client as a 401, not as a 500.
          throw httpErrorFor(err instanceof AuthFailure ? err.reason : 'malformed')
        }
      }
    },
    decode: { complete: true },
    verify: {
      extractToken,
      algorithms,
      allowedIss: options.issuers.map((i) => i.issuer),
      allowedAud: audiences,
      requiredClaims: options.requiredClaims,
      clockTolerance: options.clockToleranceMs
    },
    trusted: (_request, decoded) => {
      const payload = decoded as Record<string, unknown>
      const issuer = issuers.get(payload.iss as string)
      const aud = typeof payload.aud === 'string' ? [payload.aud] : strings(payload.aud)
      return issuer !== undefined && aud.some((a) => issuer.config.audiences.includes(a)) && typeof payload.sub === 'string'
    },
    formatUser: (payload) => {
      const p = payload as Record<string, unknown>
      const user: VerifiedUser = {
        sub: p.sub as string,
        iss: p.iss as string,
        aud: p.aud as string | string[],
        permissions: strings(p.permissions),
        scope: typeof p.scope === 'string' ? p.scope.split(' ').filter((s) => s !== '') : [],
        exp: p.exp as number,
        claims: p
      }
      if (typeof p.role === 'string') user.role = p.role
      if (typeof p.iat === 'number') user.iat = p.iat
      if (typeof p.jti === 'string') user.jti = p.jti
      return Object.freeze(user)
    }
  }
}
