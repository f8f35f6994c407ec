import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import Database from 'better-sqlite3'
import { Writable } from 'node:stream'
import pino from 'pino'
import t from 'tap'
import type { promClient } from '@portcullis/metrics'
import { rotationMetrics } from '../rotation/metrics.js'
import { RotationWorker, scheduleTrigger } from '../rotation/worker.js'
import { rotationConfigFromEnv, DEFAULT_ROTATION_SCHEDULE } from '../rotation/config.js'
import { keySecretsFromList } from '../store/crypto.js'
import { validateKeyTimings } from '../store/key-timings.js'
import { KEYS_TABLE } from '../store/keys-schema.js'
import { openKeyStore } from '../store/keys.js'
import { testBackends } from './helpers/backends.js'
import { runCli, writeClock } from './helpers/rotation-workers.js'

const timings = validateKeyTimings({ accessTokenTtl: 60, clockSkew: 5, verifierCacheMax: 30, signerPropagation: 1, prePublish: 100, retireWindow: 100, period: 400 })
const T0 = 1_800_000_000_000

async function metricValue (registry: promClient.Registry, name: string, labels: Record<string, string> = {}): Promise<number | undefined> {
  const m = (await registry.getMetricsAsJSON()).find((x) => x.name === name)
  const v = (m?.values as Array<{ value: number, labels: Record<string, string> }> | undefined)
    ?.find((x) => Object.entries(labels).every(([k, l]) => x.labels[k] === l))
  return v?.value
}

t.test('rotation config: defaults and validation', async (t) => {
  const cfg = rotationConfigFromEnv({})
  t.equal(cfg.schedule, DEFAULT_ROTATION_SCHEDULE)
  t.equal(cfg.metricsPort, 8092, 'not 9464, the OpenTelemetry Prometheus exporter\'s port')
  t.equal(cfg.metricsHost, '127.0.0.1')
  t.equal(cfg.keySize, 2048)
  t.equal(rotationConfigFromEnv({ KEY_SIZE: '4096', ROTATION_SCHEDULE: '0 */5 * * * *' }).keySize, 4096)
  t.throws(() => rotationConfigFromEnv({ ROTATION_METRICS_PORT: '70000' }), /ROTATION_METRICS_PORT: must be <= 65535/)
})

t.test('the production rotation command reads no test clock: PORTCULLIS_TEST_CLOCK_FILE set to 2033 changes nothing', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-noclock-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const clock = join(dir, 'clock')
  const future = Date.UTC(2033, 0, 1)
  writeClock(clock, future)
  const before = Date.now()
  const r = await runCli(['rotation', '--once'], {
    PORTCULLIS_DATA_DIR: join(dir, 'data'),
    PORTCULLIS_KEY_SECRETS: 'no-test-clock-secret-0123456789abcdef',
    PORTCULLIS_TEST_CLOCK_FILE: clock,
    PORTCULLIS_TEST_HOLD_TX_MS: 'not a number'
  })
  t.equal(r.code, 0, r.stderr)
  const db = new Database(join(dir, 'data', 'portcullis.db'), { readonly: true })
  t.teardown(() => db.close())
  const rows = db.prepare(`SELECT created_at FROM ${KEYS_TABLE}`).all() as Array<{ created_at: number }>
  t.equal(rows.length, 1, 'the first key')
  t.ok(rows[0]!.created_at >= before && rows[0]!.created_at <= Date.now(), 'created on the real clock, not the file\'s')
})

const [sqlite] = await testBackends()

t.test('worker ticks: metrics, one log line per state change, stop before the transaction leaves no trace', async (t) => {
  const be = await sqlite!.open()
  t.teardown(be.cleanup)
  let now = T0
  const out: string[] = []
  const log = pino({ level: 'info' }, new Writable({ write (c, _e, cb) { out.push(String(c)); cb() } }))
  const lines = (): Array<Record<string, unknown>> => out.join('').split('\n').filter((l) => l !== '').map((l) => JSON.parse(l) as Record<string, unknown>)
  const store = await openKeyStore(be.db, { secrets: keySecretsFromList(['worker-test-secret-0123456789abcdefghij']), now: () => now, timings, log })
  const metrics = rotationMetrics(() => now)
  const worker = new RotationWorker({ store, timings, keySize: 2048, log, metrics })

  t.equal(await metricValue(metrics.registry, 'portcullis_rotation_runs_total', { result: 'changed' }), 0, 'counters start at zero')
  const first = await worker.tick()
  t.equal(first.result, 'changed')
  t.equal(first.next, T0 + 300_000, 'next change: pre-publish at period - pre-publish')
  t.equal(await metricValue(metrics.registry, 'portcullis_keys', { state: 'active' }), 1)
  t.equal(await metricValue(metrics.registry, 'portcullis_rotation_last_success_timestamp_seconds'), T0 / 1000)
  now = T0 + 42_000
  t.equal(await metricValue(metrics.registry, 'portcullis_signing_key_age_seconds'), 42, 'key age from the injected clock at scrape time')
  t.equal((await worker.tick()).result, 'unchanged')
  now = T0 + 300_000
  await worker.tick()
  now = T0 + 400_000
  await worker.tick()
  t.equal(await metricValue(metrics.registry, 'portcullis_keys', { state: 'retired' }), 1)
  t.equal(await metricValue(metrics.registry, 'portcullis_signing_key_age_seconds'), 0)
  t.equal(await metricValue(metrics.registry, 'portcullis_rotation_runs_total', { result: 'changed' }), 3)
  t.equal(await metricValue(metrics.registry, 'portcullis_rotation_runs_total', { result: 'unchanged' }), 1)
  t.same(lines().filter((l) => typeof l.event === 'string' && (l.event as string).startsWith('key_')).map((l) => `${l.event as string}:${l.state as string}`),
    ['key_create:active', 'key_create:pending', 'key_retire:retired', 'key_activate:active'], 'one log line per state change')

  // A failing tick is counted, logged by the scheduled path, and reported for readiness.
  await be.db.run(`UPDATE ${KEYS_TABLE} SET public_jwk = 'x' WHERE state = 'retired'`)
  await t.rejects(worker.tick(), { code: 'PORTCULLIS_KEY_CORRUPT' })
  t.equal(await metricValue(metrics.registry, 'portcullis_rotation_runs_total', { result: 'error' }), 1)
  worker.requestTick()
  worker.requestTick() // coalesced with the running one
  await new Promise<void>((resolve) => { const i = setInterval(() => { if (worker.lastError !== undefined) { clearInterval(i); resolve() } }, 5) })
  t.match(worker.lastError, /last rotation tick failed: corrupt key row/)
  t.ok(lines().some((l) => l.event === 'tick_failed'))
  await be.db.run(`DELETE FROM ${KEYS_TABLE} WHERE state = 'retired'`)

  // stop() while a key is being generated: the tick gives up before its transaction, leaving no trace.
  now = T0 + 700_000
  const before = await be.db.query(`SELECT * FROM ${KEYS_TABLE} ORDER BY kid`)
  const pending = worker.tick()
  await worker.stop()
  await t.rejects(pending, { name: 'AbortError' })
  t.same(await be.db.query(`SELECT * FROM ${KEYS_TABLE} ORDER BY kid`), before, 'aborted tick left no trace')
  worker.requestTick()
  t.equal(worker.stopping, true, 'a stopped worker ignores the schedule')
})

t.test('the production trigger is a croner schedule', async (t) => {
  // Real time: a once-a-second pattern fires within a second; the test waits for the event.
  let fired = 0
  await new Promise<void>((resolve) => {
    const trigger = scheduleTrigger('* * * * * *', () => { fired++; trigger.stop(); resolve() })
  })
  t.equal(fired, 1)
})
