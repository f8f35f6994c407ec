/** `request.user` after a successful verification. Frozen: one object may serve many requests from the cache. */
export interface VerifiedUser {
  sub: string
  iss: string
  aud: string | string[]
  role?: string
  /** `resource:action` strings from the `permissions` claim. */
  permissions: string[]
  /** From the space-separated `scope` claim (client-credentials tokens). */
  scope: string[]
  exp: number
  iat?: number
  jti?: string
  /** Every claim of the token, as signed. */
  claims: Record<string, unknown>
}
