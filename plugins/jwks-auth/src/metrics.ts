import { collectHotCounts, promClient, type Registry } from '@portcullis/metrics'

type Counter<L extends string> = promClient.Counter<L>
type Gauge<L extends string> = promClient.Gauge<L>
type Histogram<L extends string> = promClient.Histogram<L>

export interface AuthMetrics {
  /** result = success | failure; reason = ok or a FailureReason. */
  requests: Counter<'result' | 'reason'>
  /** Time to verify one token (cache hits included), labelled by cache = hit | miss. */
  verifyDuration: Histogram<'cache'>
  /** result = updated | not_modified | failure | kid_found | kid_not_found | kid_cooldown. */
  refresh: Counter<'result'>
  /** Keys held per issuer. */
  keys: Gauge<'issuer'>
  /** Verifications that used keys past their freshness because the issuer was unreachable or answered 5xx. */
  staleServed: Counter<'issuer'>
  /** 403s of the authorize plugin, by the kind of right that was missing: role | permission | scope. */
  denials: Counter<'reason'>
  /** Revocations received from an issuer's feed, by kind (sid, sub, jti, kid). */
  revocationsReceived: Counter<'issuer' | 'kind'>
  /** Revocations in force held per issuer (read at scrape time). */
  revocationSetSize: Gauge<'issuer'>
  /** 1 while the issuer's revocation feed is connected and caught up, else 0. */
  revocationFeedUp: Gauge<'issuer'>
  /** Seconds from a revocation to its arrival here, last event per issuer. */
  revocationFeedLag: Gauge<'issuer'>
  /** Revocation feed connections lost or refused (each followed by a reconnect). */
  revocationFeedReconnects: Counter<'issuer'>
}

/** Re-uses a metric already registered under the name (a second app context on the same registry). */
function existing<T> (registry: Registry, name: string): T | undefined {
  return registry.getSingleMetric(name) as T | undefined
}

export function authMetrics (registry: Registry): AuthMetrics {
  const registers = [registry]
  return {
    requests: existing(registry, 'portcullis_auth_requests_total') ?? new promClient.Counter({
      name: 'portcullis_auth_requests_total',
      help: 'Bearer-token authentications by result and failure reason',
      labelNames: ['result', 'reason'],
      registers,
      collect: collectHotCounts // successes are summed locally on the hot path (hotCounter)
    }),
    verifyDuration: existing(registry, 'portcullis_auth_verify_duration_seconds') ?? new promClient.Histogram({
      name: 'portcullis_auth_verify_duration_seconds',
      help: 'Time to verify one bearer token, by verified-token cache outcome',
      labelNames: ['cache'],
      buckets: [0.000005, 0.00002, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.005, 0.025, 0.1, 1],
      registers,
    }),
    refresh: existing(registry, 'portcullis_jwks_refresh_total') ?? new promClient.Counter({
      name: 'portcullis_jwks_refresh_total',
      help: 'JWKS fetches (background refresh and kid-miss) by result',
      labelNames: ['result'],
      registers
    }),
    keys: existing(registry, 'portcullis_jwks_keys') ?? new promClient.Gauge({
      name: 'portcullis_jwks_keys',
      help: 'Verification keys held, per issuer',
      labelNames: ['issuer'],
      aggregator: 'max', // one value over the gateway's workers (a sum would mean nothing)
      registers
    }),
    staleServed: existing(registry, 'portcullis_jwks_stale_served_total') ?? new promClient.Counter({
      name: 'portcullis_jwks_stale_served_total',
      help: 'Verifications done with keys past their freshness while the issuer was unreachable or answering 5xx',
      labelNames: ['issuer'],
      registers
    }),
    denials: existing(registry, 'portcullis_authorization_denials_total') ?? new promClient.Counter({
      name: 'portcullis_authorization_denials_total',
      help: 'Authenticated requests refused with 403, by the kind of right that was missing (role, permission, scope)',
      labelNames: ['reason'],
      registers
    }),
    revocationsReceived: existing(registry, 'portcullis_revocations_received_total') ?? new promClient.Counter({
      name: 'portcullis_revocations_received_total',
      help: 'Revocations received from an issuer\'s feed, by kind (sid: session, sub: user, jti: token, kid: key)',
      labelNames: ['issuer', 'kind'],
      registers
    }),
    revocationSetSize: existing(registry, 'portcullis_revocation_set_size') ?? new promClient.Gauge({
      name: 'portcullis_revocation_set_size',
      help: 'Revocations in force held per issuer (each forgotten once every token it can match has expired)',
      labelNames: ['issuer'],
      aggregator: 'max', // one value over the gateway's workers (a sum would mean nothing)
      registers
    }),
    revocationFeedUp: existing(registry, 'portcullis_revocation_feed_up') ?? new promClient.Gauge({
      name: 'portcullis_revocation_feed_up',
      help: '1 while the issuer\'s revocation feed is connected and caught up, else 0',
      labelNames: ['issuer'],
      aggregator: 'min', // one value over the gateway's workers (a sum would mean nothing)
      registers
    }),
    revocationFeedLag: existing(registry, 'portcullis_revocation_feed_lag_seconds') ?? new promClient.Gauge({
      name: 'portcullis_revocation_feed_lag_seconds',
      help: 'Seconds from the issuer recording a revocation to this process receiving it (the last one)',
      labelNames: ['issuer'],
      aggregator: 'max', // one value over the gateway's workers (a sum would mean nothing)
      registers
    }),
    revocationFeedReconnects: existing(registry, 'portcullis_revocation_feed_reconnects_total') ?? new promClient.Counter({
      name: 'portcullis_revocation_feed_reconnects_total',
      help: 'Revocation feed connections lost or refused, each followed by a reconnect',
      labelNames: ['issuer'],
      registers
    })
  }
}
