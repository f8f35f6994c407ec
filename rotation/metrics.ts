import { promClient, type Registry } from '@portcullis/metrics'
import { KEY_STATES, type KeyRecord } from '../store/key-records.js'

export const RUN_RESULTS = ['changed', 'unchanged', 'error'] as const
export type RunResult = typeof RUN_RESULTS[number]

export interface RotationMetrics {
  registry: Registry
  /** Records one tick: its result, and on success the key set it left. */
  recordRun(result: RunResult, keys?: readonly KeyRecord[]): void
}

/**
 * The worker's Prometheus metrics:
 * - `portcullis_rotation_runs_total{result}` ticks by result (changed, unchanged, error);
 * - `portcullis_signing_key_age_seconds` age of the active key (computed at scrape time);
 * - `portcullis_keys{state}` keys per state after the last successful tick;
 * - `portcullis_rotation_last_success_timestamp_seconds` (alert when it stops moving).
 */
export function rotationMetrics (now: () => number, registry: Registry = new promClient.Registry()): RotationMetrics {
  const registers = [registry]
  let activatedAt: number | undefined
  const runs = new promClient.Counter({ name: 'portcullis_rotation_runs_total', help: 'Rotation ticks by result', labelNames: ['result'], registers })
  for (const r of RUN_RESULTS) runs.inc({ result: r }, 0)
  new promClient.Gauge({
    name: 'portcullis_signing_key_age_seconds',
    help: 'Seconds since the active signing key started signing',
    registers,
    collect () {
      if (activatedAt !== undefined) this.set(Math.max(0, (now() - activatedAt) / 1000))
    }
  })
  const keys = new promClient.Gauge({ name: 'portcullis_keys', help: 'Signing keys by state after the last successful tick', labelNames: ['state'], registers })
  const lastSuccess = new promClient.Gauge({ name: 'portcullis_rotation_last_success_timestamp_seconds', help: 'When the last tick succeeded (epoch seconds)', registers })
  return {
    registry,
    recordRun (result, list) {
      runs.inc({ result })
      if (result === 'error' || list === undefined) return
      lastSuccess.set(now() / 1000)
      for (const s of KEY_STATES) keys.set({ state: s }, list.filter((k) => k.state === s).length)
      activatedAt = list.find((k) => k.state === 'active')?.activatedAt ?? undefined
    }
  }
}
