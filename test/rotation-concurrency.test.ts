import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as delay } from 'node:timers/promises'
import t from 'tap'
import { KEY_EVENTS_TABLE, KEYS_TABLE } from '../store/keys-schema.js'
import { testBackends } from './helpers/backends.js'
import { CliProcess, ROTATION_TEST_WORKER, TEST_TIMING_ENV, writeClock } from './helpers/rotation-workers.js'

const WORKERS = 2
const PERIODS = 50
const R = 400_000 // ms, KEY_ROTATION_PERIOD in TEST_TIMING_ENV
// Three simulated clock steps per period, each landing on one transition: prune of the previous key
// (+100 s), pre-publish (+300 s), activation (+400 s = the next period's start).
const OFFSETS = [100_000, 300_000, 400_000]
const T0 = 1_800_000_000_000


// Real worker processes on a 2-core machine shared by the whole suite: under load this file can
// outlast the default 120 s per-file timeout without anything being wrong.
t.setTimeout(300_000)

for (const b of await testBackends()) {
  t.test(`${WORKERS} worker processes on ${b.name} over ${PERIODS} simulated periods: one rotation per period, always one active key`, { skip: b.skip }, async (t) => {
    const be = await b.open()
    const dir = mkdtempSync(join(tmpdir(), 'portcullis-clock-'))
    const clock = join(dir, 'clock')
    writeClock(clock, T0)
    const env = {
      ...be.env,
      ...TEST_TIMING_ENV,
      PORTCULLIS_KEY_SECRETS: 'concurrency-test-secret-0123456789abcdef',
      TEST_CLOCK_FILE: clock,
      LOG_LEVEL: 'debug',
      ROTATION_METRICS_PORT: '0'
    }
    const workers = Array.from({ length: WORKERS }, () => new CliProcess([], env, ROTATION_TEST_WORKER))
    t.teardown(async () => {
      for (const w of workers) w.kill('SIGKILL')
      await Promise.all(workers.map((w) => w.exited))
      await be.cleanup()
      rmSync(dir, { recursive: true, force: true })
    })
    // Both boot ticks race on the empty store: exactly one first key may win.
    await Promise.all(workers.map((w) => w.waitFor((l) => l.event === 'scheduled', 'the worker to start')))

    // An observer reads the active count continuously while the workers tick.
    const obs = be.reopen()
    const countActive = async (): Promise<number> => Number((await obs.query<{ n: number }>(`SELECT count(*) AS n FROM ${KEYS_TABLE} WHERE state = 'active'`))[0]!.n)
    const bad: string[] = []
    let observations = 0
    let observing = true
    const observer = (async () => {
      while (observing) {
        const n = await countActive()
        observations++
        if (n !== 1) bad.push(`${n} active keys`)
        await delay(5) // a sampling interval, not a wait for a condition
      }
    })()

    const steps = Array.from({ length: PERIODS }, (_, k) => OFFSETS.map((o) => T0 + k * R + o)).flat()
    for (const [i, now] of steps.entries()) {
      const marks = workers.map((w) => w.lines.length)
      writeClock(clock, now)
      await Promise.all(workers.map((w, j) => w.waitFor((l) => l.event === 'tick' && l.now! >= now, `a tick at ${now}`, marks[j])))
      const n = await countActive()
      observations++
      if (n !== 1) bad.push(`${n} active keys after step ${i}`)
    }
    observing = false
    await observer

    t.same(bad, [], 'exactly one active key at every observation')
    t.ok(observations > steps.length, `${observations} observations`)

    // Exactly one rotation per period, from the state-change log written in the same transactions.
    const events = await obs.query<{ at: number, kid: string, event: string, detail: string | null }>(`SELECT at, kid, event, detail FROM ${KEY_EVENTS_TABLE} ORDER BY at`)
    const activations = events.filter((e) => e.event === 'activate' || (e.event === 'create' && e.detail === 'active'))
    t.equal(activations.length, PERIODS + 1, 'the first key plus one activation per period')
    t.equal(Number(activations[0]!.at), T0, 'first key active at boot')
    for (let k = 1; k <= PERIODS; k++) {
      const inPeriod = activations.filter((e) => Number(e.at) >= T0 + k * R && Number(e.at) < T0 + (k + 1) * R)
      if (inPeriod.length !== 1 || Number(inPeriod[0]!.at) !== T0 + k * R) t.fail(`period ${k}: ${inPeriod.length} activations`)
    }
    const created = events.filter((e) => e.event === 'create')
    t.equal(created.length, PERIODS + 1, 'each key created once')
    t.equal(new Set(activations.map((e) => e.kid)).size, PERIODS + 1, 'every period signs with a new key')
    t.equal(events.filter((e) => e.event === 'retire').length, PERIODS)
    t.equal(events.filter((e) => e.event === 'prune').length, PERIODS - 1, 'every retired key pruned after its window (the last one is still in it)')

    const failures = workers.flatMap((w) => w.lines.filter((l) => l.event === 'tick_failed'))
    t.same(failures, [], 'no tick failed (lock waits, not errors)')
    const discarded = workers.flatMap((w) => w.lines.filter((l) => l.event === 'tick' && l.discardedKey === true)).length
    const changedBy = workers.map((w) => w.lines.filter((l) => l.event === 'tick' && l.result === 'changed').length)
    t.comment(`changes applied per worker: ${changedBy.join(', ')}; keys generated then discarded because another worker won: ${discarded}`)

    // The metrics listener of a daemon reflects the store.
    const port = Number(workers[0]!.lines.find((l) => l.event === 'metrics_listening')!.port)
    const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text()
    t.match(text, /portcullis_keys\{state="active"\} 1\n/)
    t.match(text, /portcullis_keys\{state="pending"\} 0\n/)
    t.match(text, /portcullis_rotation_runs_total\{result="error"\} 0\n/)
    t.match(text, new RegExp(`portcullis_rotation_last_success_timestamp_seconds ${(T0 + PERIODS * R) / 1000}\\n`))
    t.match(text, /portcullis_signing_key_age_seconds 0\n/)

    for (const w of workers) w.kill('SIGTERM')
    const exits = await Promise.all(workers.map((w) => w.exited))
    t.same(exits.map((e) => e.code), workers.map(() => 0), 'clean exit on SIGTERM')
  })
}
