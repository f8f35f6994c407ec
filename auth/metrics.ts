import { promClient, type Registry } from '@portcullis/metrics'

export type Grant = 'login' | 'refresh_token' | 'client_credentials'
/**
 * Why the auth service refused a credential: a login (`invalid_credentials`, `rate_limited_ip`,
 * `rate_limited_user`), a client of the client-credentials grant (`invalid_client`: unknown client,
 * wrong secret or no credentials; `invalid_scope`), or a refresh token at /auth/refresh or the
 * refresh_token grant (`refresh_unknown`, `refresh_expired`, `refresh_revoked`, `refresh_reused`: all
 * answered `invalid_grant`). The same values as the `reason` of the `auth_failure` log lines.
 */
export const LOGIN_FAILURES = [
  'invalid_credentials', 'rate_limited_ip', 'rate_limited_user', 'invalid_client', 'invalid_scope',
  'refresh_unknown', 'refresh_expired', 'refresh_revoked', 'refresh_reused'
] as const
export type LoginFailure = typeof LOGIN_FAILURES[number]

export interface AuthMetrics {
  tokensIssued: promClient.Counter<'grant'>
  loginFailures: promClient.Counter<'reason'>
  refreshReuse: promClient.Counter
  keyChanges: promClient.Counter
  keyReadFailures: promClient.Counter
}

/** The auth service's `portcullis_*` metrics, registered in the app's registry (served on the admin port). */
export function createAuthMetrics (registry: Registry): AuthMetrics {
  const registers = [registry]
  const m: AuthMetrics = {
    tokensIssued: new promClient.Counter({
      name: 'portcullis_tokens_issued_total',
      help: 'Access tokens issued, by grant (login, refresh_token, client_credentials)',
      labelNames: ['grant'],
      registers
    }),
    loginFailures: new promClient.Counter({
      name: 'portcullis_login_failures_total',
      help: 'Refused logins, client authentications and refresh tokens, by reason',
      labelNames: ['reason'],
      registers
    }),
    refreshReuse: new promClient.Counter({
      name: 'portcullis_refresh_token_reuse_total',
      help: 'Re-used (already rotated) refresh tokens; each one revoked its family',
      registers
    }),
    keyChanges: new promClient.Counter({
      name: 'portcullis_signing_key_changes_total',
      help: 'Times the signer switched to another active key (or to none)',
      registers
    }),
    keyReadFailures: new promClient.Counter({
      name: 'portcullis_signing_key_read_failures_total',
      help: 'Failed reads of the key store by the signer',
      registers
    })
  }
  // Zero series up front, so dashboards and alerts see every label from the start.
  for (const g of ['login', 'refresh_token', 'client_credentials'] satisfies Grant[]) m.tokensIssued.inc({ grant: g }, 0)
  for (const r of LOGIN_FAILURES) m.loginFailures.inc({ reason: r }, 0)
  return m
}
