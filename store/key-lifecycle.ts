import type { KeyChange, KeyDecision, KeyRecord } from './keys.js'
import type { KeyTimings } from './key-timings.js'

/**
 * The lifecycle's timing rules, pure: given the keys and `now` (epoch ms), what one tick changes.
 * Idempotent by construction (a second call on the result returns nothing to do), so several
 * workers can run it; the store runs it inside its transaction on fresh rows.
 *
 * pending --(activatesAt, and published >= pre-publish)--> active --(next one activates)--> retired
 *   --(retiredAt + retire window)--> pruned.  revoked --(revokedAt + retire window)--> pruned.
 */
export function planTick (keys: readonly KeyRecord[], now: number, t: KeyTimings): KeyChange[] {
  const ms = (s: number): number => Math.round(s * 1000)
  const changes: KeyChange[] = []
  for (const k of keys) {
    const gone = k.state === 'retired' ? k.retiredAt : k.state === 'revoked' ? k.revokedAt : null
    if (gone !== null && now >= gone + ms(t.retireWindow)) changes.push({ op: 'prune', kid: k.kid })
  }
  const active = keys.find((k) => k.state === 'active')
  const pending = keys.find((k) => k.state === 'pending')
  if (active === undefined) {
    // Nothing signs: an empty store gets its first key at once; otherwise the published pending key
    // is the least-bad replacement (only reachable by editing the store by hand).
    changes.push(pending !== undefined ? { op: 'activate', kid: pending.kid } : { op: 'create', state: 'active', activatesAt: now })
    return changes
  }
  if (pending !== undefined) {
    if (now >= activationTime(pending, t)) {
      changes.push({ op: 'retire', kid: active.kid }, { op: 'activate', kid: pending.kid })
    }
    return changes
  }
  const due = active.activatedAt! + ms(t.period)
  if (now >= due - ms(t.prePublish)) {
    changes.push({ op: 'create', state: 'pending', activatesAt: Math.max(due, now + ms(t.prePublish)) })
  }
  return changes
}

/** When a pending key may start signing: its plan, but never before it was published for the pre-publish window. */
export function activationTime (pending: KeyRecord, t: KeyTimings): number {
  return Math.max(pending.activatesAt ?? 0, pending.createdAt + Math.round(t.prePublish * 1000))
}

/** When a retired or revoked key leaves the store (null for keys that are still live). */
export function pruneTime (k: KeyRecord, t: KeyTimings): number | null {
  const gone = k.state === 'retired' ? k.retiredAt : k.state === 'revoked' ? k.revokedAt : null
  return gone === null ? null : gone + Math.round(t.retireWindow * 1000)
}

/** The next instant at which `planTick` would change something (for logs and `keys list`). */
export function nextChangeTime (keys: readonly KeyRecord[], t: KeyTimings): number | null {
  const times: number[] = []
  const active = keys.find((k) => k.state === 'active')
  const pending = keys.find((k) => k.state === 'pending')
  if (pending !== undefined) times.push(activationTime(pending, t))
  else if (active !== undefined) times.push(active.activatedAt! + Math.round((t.period - t.prePublish) * 1000))
  for (const k of keys) {
    const p = pruneTime(k, t)
    if (p !== null) times.push(p)
  }
  return times.length === 0 ? null : Math.min(...times)
}

/** The tick as a store decision. */
export function tickDecision (t: KeyTimings): KeyDecision {
  return (keys, now) => planTick(keys, now, t)
}
