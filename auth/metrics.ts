import { promClient, type Registry } from '@portcullis/metrics'

export type Grant = 'login' | 'refresh_token' | 'client_credentials'
export type LoginFailure = 'invalid_credentials' | 'rate_limited_ip' | 'rate_limited_user'

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
      help: 'Refused logins, by reason',
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
  for (const r of ['invalid_credentials', 'rate_limited_ip', 'rate_limited_user'] satisfies LoginFailure[]) m.loginFailures.inc({ reason: r }, 0)
  return m
}
