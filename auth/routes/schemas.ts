/** JSON Schemas of the request bodies (Fastify's ajv, with type coercion off: a number is not a string). */
const str = (maxLength: number): { type: 'string', minLength: 1, maxLength: number } => ({ type: 'string', minLength: 1, maxLength })

export const MAX_REFRESH_TOKEN_LENGTH = 512

/** RFC 7009 revocation request: the token, and a hint of its type (which may be wrong). */
export const revokeBody = {
  type: 'object',
  required: ['token'],
  additionalProperties: false,
  properties: {
    token: str(8192),
    token_type_hint: { type: 'string', maxLength: 64 },
    client_id: str(256)
  }
} as const
export interface RevokeBody { token: string, token_type_hint?: string, client_id?: string }

export const loginBody = {
  type: 'object',
  required: ['username', 'password'],
  additionalProperties: false,
  properties: { username: str(128), password: str(1024) }
} as const

export const refreshBody = {
  type: 'object',
  required: ['refresh_token'],
  additionalProperties: false,
  properties: { refresh_token: str(MAX_REFRESH_TOKEN_LENGTH) }
} as const

/** RFC 6749 token request; which members are required depends on grant_type (checked in the handler). */
export const tokenBody = {
  type: 'object',
  required: ['grant_type'],
  additionalProperties: false,
  properties: {
    grant_type: str(64),
    client_id: str(128),
    client_secret: str(256),
    scope: { type: 'string', maxLength: 1024 },
    refresh_token: str(MAX_REFRESH_TOKEN_LENGTH)
  }
} as const

export interface LoginBody { username: string, password: string }
export interface RefreshBody { refresh_token: string }
export interface TokenBody {
  grant_type: string
  client_id?: string
  client_secret?: string
  scope?: string
  refresh_token?: string
}
