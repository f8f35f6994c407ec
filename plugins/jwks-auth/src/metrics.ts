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
      registers
    }),
    staleServed: existing(registry, 'portcullis_jwks_stale_served_total') ?? new promClient.Counter({
      name: 'portcullis_jwks_stale_served_total',
      help: 'Verifications done with keys past their freshness while the issuer was unreachable or answering 5xx',
      labelNames: ['issuer'],
      registers
    })
  }
}
