import type { Registry } from '@portcullis/metrics'
import { request } from 'undici'
import type { GatewayConfig } from './config.js'
import type { GatewayStatus, IssuerStatus, KeyStatus, RouteStatus, StatusCounters, UpstreamStatus } from './status-page.js'

/** How long the status document waits for the key timeline (the auth service's admin `/keys`). */
export const KEYS_FETCH_TIMEOUT_MS = 1000

/** What the status document is built from: the running gateway's parts, read when it is asked for. */
export interface StatusSources {
  version: string
  loadedAt: Date
  startedAt: Date
  config: GatewayConfig
  /** The verifier's view of each issuer (`app.jwksAuth.status()`), empty without issuers. */
  issuers: () => Array<{ issuer: string, jwksUri: string, loaded: boolean, lastFetchAt: number | null, ageSeconds: number | null, freshness: string, lastError: string | null, kids: string[] }>
  /** Registries whose metrics feed the breaker states and counters. */
  registries: () => Registry[]
  /** URL of the key timeline (GATEWAY_STATUS_KEYS_URL), or undefined. */
  keysUrl: string | undefined
}

const iso = (ms: number | null | undefined): string | null => (ms === null || ms === undefined ? null : new Date(ms).toISOString())

interface MetricValue { value: number, labels: Record<string, string | number> }
type Metrics = Map<string, MetricValue[]>

async function readMetrics (registries: Registry[]): Promise<Metrics> {
  const out: Metrics = new Map()
  for (const r of registries) {
    for (const m of await r.getMetricsAsJSON()) {
      const values = (m as { values?: Array<{ value: number, labels: Record<string, string | number>, metricName?: string }> }).values ?? []
      for (const v of values) {
        const name = v.metricName ?? m.name
        let list = out.get(name)
        if (list === undefined) out.set(name, list = [])
        list.push({ value: v.value, labels: v.labels })
      }
    }
  }
  return out
}

const sum = (metrics: Metrics, name: string, match: (labels: Record<string, string | number>) => boolean = () => true): number =>
  (metrics.get(name) ?? []).filter((v) => match(v.labels)).reduce((a, v) => a + v.value, 0)

const BREAKER_NAMES: Record<number, UpstreamStatus['breaker']> = { 0: 'closed', 1: 'open', 2: 'half-open' }

/** The timeline from the auth service, or why it could not be read. */
async function readKeys (url: string): Promise<{ items: KeyStatus[] } | { error: string }> {
  try {
    const res = await request(url, { headersTimeout: KEYS_FETCH_TIMEOUT_MS, bodyTimeout: KEYS_FETCH_TIMEOUT_MS, signal: AbortSignal.timeout(KEYS_FETCH_TIMEOUT_MS) })
    const text = await res.body.text()
    if (res.statusCode !== 200) return { error: `${url} answered ${res.statusCode}` }
    const doc = JSON.parse(text) as { keys?: unknown }
    if (!Array.isArray(doc.keys)) return { error: `${url} answered no "keys" array` }
    const str = (v: unknown): string | null => (typeof v === 'string' ? v : null)
    const items: KeyStatus[] = []
    for (const k of doc.keys as Array<Record<string, unknown>>) {
      const state = k.state
      if (typeof k.kid !== 'string' || (state !== 'pending' && state !== 'active' && state !== 'retired' && state !== 'revoked')) continue
      items.push({
        kid: k.kid,
        state,
        createdAt: str(k.createdAt),
        activatesAt: str(k.activatesAt),
        activatedAt: str(k.activatedAt),
        retiredAt: str(k.retiredAt),
        revokedAt: str(k.revokedAt),
        published: false
      })
    }
    return { items }
  } catch (err) {
    return { error: `${url}: ${(err as Error).message}` }
  }
}

/**
 * The document `GET /status.json` answers (GatewayStatus in status-page.ts): key timeline, issuers'
 * JWKS freshness, upstreams and breakers, routes and limits, counters since the config was loaded.
 */
export async function gatewayStatus (src: StatusSources): Promise<GatewayStatus> {
  const [metrics, timeline] = await Promise.all([
    readMetrics(src.registries()),
    src.keysUrl === undefined ? undefined : readKeys(src.keysUrl)
  ])
  const held = src.issuers()
  const issuers: IssuerStatus[] = held.map((i) => ({
    issuer: i.issuer,
    jwksUri: i.jwksUri,
    loaded: i.loaded,
    lastFetchAt: iso(i.lastFetchAt),
    ageSeconds: i.ageSeconds === null ? null : Math.round(i.ageSeconds * 10) / 10,
    stale: i.freshness !== 'fresh',
    lastError: i.lastError,
    kids: i.kids
  }))
  const published = new Set(held.flatMap((i) => i.kids))
  let items: KeyStatus[]
  let error: string | null = null
  if (timeline !== undefined && 'items' in timeline) {
    items = timeline.items.map((k) => ({ ...k, published: published.has(k.kid) }))
  } else {
    if (timeline !== undefined) error = timeline.error
    // what the JWKS shows: kids without their timeline
    items = [...published].map((kid) => ({ kid, state: 'published', createdAt: null, activatesAt: null, activatedAt: null, retiredAt: null, revokedAt: null, published: true }))
  }

  const routesByOrigin = new Map<string, string[]>()
  for (const r of src.config.routes) {
    const origin = new URL(r.upstream).origin
    routesByOrigin.set(origin, [...(routesByOrigin.get(origin) ?? []), r.name])
  }
  const upstreams: UpstreamStatus[] = [...routesByOrigin].map(([origin, routes]) => {
    const state = (metrics.get('portcullis_circuit_breaker_state') ?? []).find((v) => v.labels.upstream === origin)?.value ?? 0
    return {
      origin,
      breaker: BREAKER_NAMES[state] ?? 'closed',
      routes,
      errors: sum(metrics, 'portcullis_upstream_errors_total', (l) => l.upstream === origin)
    }
  })

  const global = src.config.rateLimit
  const routes: RouteStatus[] = src.config.routes.map((r) => ({
    name: r.name,
    prefix: r.prefix,
    upstream: r.upstream,
    methods: r.methods ?? null,
    auth: r.auth,
    rateLimit: r.rateLimit === false
      ? null
      : r.rateLimit !== undefined
        ? { max: r.rateLimit.max, timeWindowSeconds: r.rateLimit.timeWindow, scope: 'route' }
        : global === false ? null : { max: global.max, timeWindowSeconds: global.timeWindow, scope: 'global' }
  }))

  const requests = (cls: string): number => sum(metrics, 'http_request_duration_seconds_count', (l) => String(l.status_code).startsWith(cls))
  const counters: StatusCounters = {
    requests: sum(metrics, 'http_request_duration_seconds_count'),
    byClass: { '2xx': requests('2'), '3xx': requests('3'), '4xx': requests('4'), '5xx': requests('5') },
    authFailures: sum(metrics, 'portcullis_auth_requests_total', (l) => l.result === 'failure'),
    rateLimited: sum(metrics, 'portcullis_rate_limit_rejections_total'),
    upstreamErrors: sum(metrics, 'portcullis_upstream_errors_total'),
    configReloads: sum(metrics, 'portcullis_config_reloads_total', (l) => l.result === 'success')
  }

  return {
    generatedAt: new Date().toISOString(),
    gateway: { version: src.version, loadedAt: src.loadedAt.toISOString(), startedAt: src.startedAt.toISOString(), pid: process.pid },
    keys: { source: src.keysUrl ?? null, error, items },
    issuers,
    upstreams,
    routes,
    counters
  }
}
