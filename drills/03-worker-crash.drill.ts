/**
 * Drill 3: worker crash. Two `portcullis rotation` workers on one PostgreSQL database: one runs
 * undisturbed, the other is SIGKILLed again and again at varied points of the ticks that change the
 * key set (pre-publish, activate, prune: the moments the drill computes from the stored keys; the
 * workers tick on whole seconds) and restarted after each kill. The key rows are observed every
 * 100 ms.
 *
 * Promises: exactly one active key at every observation; no key leaves the store before its prune
 * time or goes back in its lifecycle; every activation comes at least KEY_ROTATION_PERIOD after the
 * previous one and KEY_PREPUBLISH after its key was created; no period lost (each key created and
 * activated on the first tick at which it was due, give or take the tick's own time); the number of
 * activations equals the elapsed periods (+-1 at the edges, and less the periods measured tick
 * lateness accounts for); one create per activation (a crash never leaves a second pending key).
 */
import { setTimeout as sleep } from 'node:timers/promises'
import { Drill } from './lib/summary.js'
import { createDatabase, baseEnv, requireBackends, startRotation, stopAll, type Proc } from './lib/processes.js'
import { KeyObserver, readKeyEvents } from './lib/keys.js'
import type { KeyRow } from './lib/tokens.js'

/**
 * Lifecycle rules with C=1 s, S=0, P=1 s: pre-publish 2 s >= C+S+P; retire window 5 s >=
 * P+T+S+C = 4 s. With a tick every second the next key is created on the tick after an activation
 * (R - pre-publish = 0.5 s) and activates on the first tick 2 s after it was created: the third tick
 * after that one, as long as generating the key and committing takes under a second. So the nominal
 * period is 1 + 2 + 1 = 4 s; 3 s when the tick 2 s after the creation fires in the same millisecond
 * (seen in CI: gaps of 2992 ms, with the 100 ms observer).
 */
const TIMINGS = {
  ACCESS_TOKEN_TTL: '2s',
  CLOCK_SKEW: '0s',
  VERIFIER_CACHE_MAX: '1s',
  SIGNER_PROPAGATION: '1s',
  KEY_PREPUBLISH: '2s',
  KEY_RETIRE_WINDOW: '5s',
  KEY_ROTATION_PERIOD: '2500ms',
  ROTATION_SCHEDULE: '* * * * * *'
}
const PERIOD_MS = 2500
const PREPUBLISH_MS = 2000
const RETIRE_WINDOW_MS = 5000
const NOMINAL_MS = 4000
/** The shortest period the plan allows: KEY_PREPUBLISH ending just before a whole-second tick. */
const FASTEST_MS = 3000
const DRILL_MS = 56_000
/** A key created later than this after the tick at which it was due: a period lost (generating a 2048-bit key on a loaded 2-core machine takes up to ~1.5 s). */
const MAX_CREATE_LATE_MS = 2500
/** A key activated later than this after the tick at which it was due: a period lost. */
const MAX_ACTIVATE_LATE_MS = 1500
/** Kill offsets after the second on which a changing tick fires, ms: before, inside key generation, inside the transaction, after. */
const OFFSETS = [0, 5, 15, 30, 60, 100, 150, 250, 400, 700]

/** The next instant a tick changes something (as the lifecycle plans it: store/key-lifecycle.ts), epoch ms. */
function nextChange (keys: KeyRow[]): number {
  const times: number[] = []
  const active = keys.find((k) => k.state === 'active')
  const pending = keys.find((k) => k.state === 'pending')
  if (pending !== undefined) times.push(Math.max(pending.activatesAt ?? 0, pending.createdAt + PREPUBLISH_MS))
  else if (active !== undefined) times.push(active.activatedAt! + PERIOD_MS - PREPUBLISH_MS)
  for (const k of keys) if (k.retiredAt !== null && k.state === 'retired') times.push(k.retiredAt + RETIRE_WINDOW_MS)
  return Math.min(...times)
}

interface Kill { at: number, second: number, offset: number, outcome: 'mid-tick' | 'after-tick', victimChanged: boolean }

await new Drill('03-worker-crash').run(async (d) => {
  if (!await requireBackends(d, { postgres: true })) return
  const db = await createDatabase()
  d.cleanup(db.drop)
  d.cleanup(() => stopAll())

  const env = baseEnv({ DATABASE_URL: db.url, LOG_LEVEL: 'debug', ...TIMINGS })
  const steady = await startRotation({ env, name: 'rotation-steady' })
  let victim: Proc = await startRotation({ env, name: 'rotation-victim' })
  const victims: Proc[] = [victim]
  const observer = new KeyObserver({ pool: db.pool, everyMs: 100, retireWindowMs: RETIRE_WINDOW_MS })
  await observer.observe()
  observer.start()

  const start = Date.now()
  const kills: Kill[] = []
  let i = 0
  while (Date.now() - start < DRILL_MS) {
    await victim.ready(30_000)
    // the next changing tick at least 300 ms ahead (time to aim), on a whole second
    const keys = observer.current
    let due = nextChange(keys)
    if (!Number.isFinite(due)) due = Date.now()
    let second = Math.ceil(Math.max(due, Date.now() + 300) / 1000) * 1000
    if (second - Date.now() > 5000) second = Math.ceil((Date.now() + 300) / 1000) * 1000 // nothing due soon: any tick
    const offset = OFFSETS[i++ % OFFSETS.length]!
    await sleep(Math.max(0, second + offset - Date.now()))
    victim.kill('SIGKILL')
    const at = Date.now()
    await victim.exited
    // its log tells whether it finished that tick (a `tick` line with now >= the second) and whether it committed a change
    const after = victim.logs.filter((l) => l.event === 'tick' && Number(l.now) >= second)
    kills.push({ at, second, offset, outcome: after.length > 0 ? 'after-tick' : 'mid-tick', victimChanged: after.some((l) => l.result === 'changed') })
    victim = victim.restart()
    victims.push(victim)
  }
  await sleep(500)
  await observer.observe()
  await observer.stop()
  const end = Date.now()

  // Activations after the first one of the drill (its edges), from the observer and the store's event log.
  const acts = observer.activationsBetween(start, end)
  const events = await readKeyEvents(db.pool)
  const created = new Map(events.filter((e) => e.event === 'create').map((e) => [e.kid, e.at]))
  const activateEvents = events.filter((e) => e.event === 'activate' && e.at >= start && e.at <= end)
  const createEvents = events.filter((e) => e.event === 'create' && e.at >= start && e.at <= end)
  const gaps = acts.slice(1).map((a, j) => a.at - acts[j]!.at)
  const span = acts.length > 1 ? acts.at(-1)!.at - acts[0]!.at : 0
  const elapsedPeriods = (end - start) / NOMINAL_MS
  const changedBy = (p: Proc[]): number => p.reduce((s, v) => s + v.logs.filter((l) => l.event === 'tick' && l.result === 'changed' && Number(l.now) >= start).length, 0)

  d.figure('kills', kills.length)
  d.figure('midTick', kills.filter((k) => k.outcome === 'mid-tick').length)
  d.figure('afterTick', kills.filter((k) => k.outcome === 'after-tick').length)
  d.figure('activations', acts.length)
  d.figure('elapsedPeriods', elapsedPeriods.toFixed(1))
  d.figure('gapMs', gaps.length > 0 ? `${Math.min(...gaps)}-${Math.max(...gaps)}` : '-')
  d.figure('observations', observer.observations)
  d.figure('activeMin', observer.minActive)
  d.figure('activeMax', observer.maxActive)
  d.figure('changesBySteady', changedBy([steady]))
  d.figure('changesByVictim', changedBy(victims))
  d.figure('steadyAlive', steady.alive ? 'yes' : 'no')

  d.check(kills.length >= 8, `only ${kills.length} kills`)
  d.check(kills.some((k) => k.outcome === 'mid-tick'), 'no kill landed inside a tick')
  d.check(observer.violations.length === 0, `${observer.violations.length} observations broken: ${observer.violations.slice(0, 5).map((v) => `+${((v.at - start) / 1000).toFixed(1)}s ${v.what}`).join(' | ')}`)
  d.check(observer.readErrors.length === 0, `${observer.readErrors.length} observation reads failed: ${observer.readErrors.slice(0, 3).map((e) => e.what).join(' | ')}`)
  d.check(observer.observations >= (end - start) / 250, `only ${observer.observations} observations in ${((end - start) / 1000).toFixed(0)} s`)
  // Each activation against the lifecycle plan: never early (KEY_ROTATION_PERIOD after the previous
  // one, KEY_PREPUBLISH after its key was created), and no period lost: the key was created on the
  // first tick at which it was due (+ key generation, on a loaded machine) and activated on the first
  // tick at which it was due (+ the tick's own time). Ticks fire on whole seconds.
  const tick = (t: number): number => Math.ceil(t / 1000) * 1000
  let maxCreateLate = -Infinity
  let maxActivateLate = -Infinity
  let excess = 0
  for (const [j, g] of gaps.entries()) {
    const prev = acts[j]!
    const a = acts[j + 1]!
    const c = created.get(a.kid)
    d.check(g >= PERIOD_MS, `activation of ${a.kid.slice(0, 8)} came ${g} ms after the previous one, under KEY_ROTATION_PERIOD`)
    d.check(c !== undefined && a.at - c >= PREPUBLISH_MS, `key ${a.kid.slice(0, 8)} activated ${c === undefined ? '(creation not logged)' : `${a.at - c} ms`} after it was created, under KEY_PREPUBLISH`)
    if (c === undefined) continue
    const createLate = c - tick(prev.at + PERIOD_MS - PREPUBLISH_MS)
    const activateLate = a.at - tick(Math.max(prev.at + PERIOD_MS, c + PREPUBLISH_MS))
    maxCreateLate = Math.max(maxCreateLate, createLate)
    maxActivateLate = Math.max(maxActivateLate, activateLate)
    d.check(createLate <= MAX_CREATE_LATE_MS, `key ${a.kid.slice(0, 8)} was created ${createLate} ms after the tick at which it was due (a period lost?)`)
    d.check(activateLate <= MAX_ACTIVATE_LATE_MS, `key ${a.kid.slice(0, 8)} was activated ${activateLate} ms after the tick at which it was due (a period lost?)`)
    excess += Math.max(0, g - NOMINAL_MS)
  }
  // The count: one activation per nominal period elapsed, +-1 at the edges, less the periods that the
  // (bounded, checked above) lateness of ticks on a loaded machine accounts for. The period is 3 or
  // 4 s: a key created in the first milliseconds of a tick activates 3 ticks after the previous
  // activation when its KEY_PREPUBLISH ends just before a tick fires, 4 when just after.
  const allowed = 1 + excess / NOMINAL_MS
  const most = (end - start) / FASTEST_MS + 1
  const least = elapsedPeriods - allowed
  d.check(acts.length <= most && acts.length >= least, `${acts.length} activations in ${((end - start) / 1000).toFixed(1)} s: between ${least.toFixed(1)} (periods of ${NOMINAL_MS} ms, less late ticks) and ${most.toFixed(1)} (periods of ${FASTEST_MS} ms) expected`)
  d.figure('createLateMaxMs', Number.isFinite(maxCreateLate) ? maxCreateLate : '-')
  d.figure('activateLateMaxMs', Number.isFinite(maxActivateLate) ? maxActivateLate : '-')
  d.figure('tickLateMs', excess)
  d.check(activateEvents.length === acts.length, `the store logged ${activateEvents.length} activations, the observer saw ${acts.length}`)
  d.check(createEvents.length <= activateEvents.length + 1 && createEvents.length >= activateEvents.length - 1, `${createEvents.length} keys created for ${activateEvents.length} activations`)
  d.check(steady.alive, 'the steady worker exited')
  d.log(`kills: ${kills.map((k) => `${k.offset}ms:${k.outcome}${k.victimChanged ? '+changed' : ''}`).join(' ')}`)
  d.log(`gaps: ${gaps.join(' ')}; span ${span} ms`)
  if (d.broken.length > 0) {
    // the timeline, for the report: key changes and kills in seconds since the drill's start
    const rel = (t: number): string => ((t - start) / 1000).toFixed(2)
    const line = [
      ...events.filter((e) => e.at >= start && (e.event === 'create' || e.event === 'activate')).map((e) => ({ t: e.at, s: `${rel(e.at)} ${e.event} ${e.kid.slice(0, 6)}` })),
      ...kills.map((k) => ({ t: k.at, s: `${rel(k.at)} KILL(+${k.offset}ms ${k.outcome})` })),
      ...victims.map((v) => ({ t: v.startedAt, s: `${rel(v.startedAt)} victim start` }))
    ].sort((a, b) => a.t - b.t).map((x) => x.s)
    d.log(`timeline: ${line.join(', ')}`)
    d.log(`steady tick lines (changed): ${steady.logs.filter((l) => l.event === 'tick' && l.result === 'changed' && Number(l.now) >= start).map((l) => `${rel(Number(l.now))}->${rel(Number(l.time))}`).join(' ')}`)
  }
})
