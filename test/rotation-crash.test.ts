import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as delay } from 'node:timers/promises'
import t from 'tap'
import { keySecretsFromList } from '../store/crypto.js'
import { KEYS_TABLE } from '../store/keys-schema.js'
import { openKeyStore } from '../store/keys.js'
import type { Db } from '../store/db.js'
import { testBackends } from './helpers/backends.js'
import { CliProcess, ROTATION_TEST_WORKER, TEST_TIMING_ENV, writeClock } from './helpers/rotation-workers.js'

const SECRET = 'crash-test-secret-0123456789abcdefghijkl'
const T0 = 1_800_000_000_000
const S = (s: number): number => T0 + s * 1000
const RANDOM_KILLS = 4

async function dump (db: Db): Promise<unknown[]> {
  return await db.query(`SELECT * FROM ${KEYS_TABLE} ORDER BY kid`)
}

/** The crash-safety invariants: one active key (once there are keys), every signing key has its sealed private part. */
async function invariants (db: Db): Promise<string[]> {
  const problems: string[] = []
  const rows = await db.query<{ kid: string, state: string, private_sealed: string | null }>(`SELECT kid, state, private_sealed FROM ${KEYS_TABLE}`)
  const active = rows.filter((r) => r.state === 'active').length
  if (rows.length > 0 && active !== 1) problems.push(`${active} active keys`)
  if (rows.filter((r) => r.state === 'pending').length > 1) problems.push('two pending keys')
  for (const r of rows) {
    const signing = r.state === 'active' || r.state === 'pending'
    if (signing && r.private_sealed === null) problems.push(`${r.state} key ${r.kid} without its private part`)
    if (!signing && r.private_sealed !== null) problems.push(`${r.state} key ${r.kid} still holds its private part`)
  }
  try {
    await (await openKeyStore(db, { secrets: keySecretsFromList([SECRET]) })).verifySecrets()
  } catch (err) {
    problems.push((err as Error).message)
  }
  return problems
}


// Real worker processes on a 2-core machine shared by the whole suite: under load this file can
// outlast the default 120 s per-file timeout without anything being wrong.
t.setTimeout(300_000)

for (const b of await testBackends()) {
  t.test(`SIGKILL mid-tick on ${b.name} never leaves zero or two active keys, nor a published key without its private part`, { skip: b.skip }, async (t) => {
    const be = await b.open()
    const dir = mkdtempSync(join(tmpdir(), 'portcullis-crash-'))
    const clock = join(dir, 'clock')
    const procs: CliProcess[] = []
    t.teardown(async () => {
      for (const p of procs) p.kill('SIGKILL')
      await Promise.all(procs.map((p) => p.exited))
      await be.cleanup()
      rmSync(dir, { recursive: true, force: true })
    })
    const env = { ...be.env, ...TEST_TIMING_ENV, PORTCULLIS_KEY_SECRETS: SECRET, TEST_CLOCK_FILE: clock, LOG_LEVEL: 'debug', ROTATION_METRICS_PORT: '0' }
    const start = (extra: Record<string, string> = {}): CliProcess => {
      const p = new CliProcess([], { ...env, ...extra }, ROTATION_TEST_WORKER)
      procs.push(p)
      return p
    }
    const db = be.db
    await openKeyStore(db, { secrets: keySecretsFromList([SECRET]) }) // creates the tables, so "before" can be read

    /** Starts a worker that holds its first changing transaction open, kills it inside, and checks nothing changed. */
    const killInsideTx = async (what: string): Promise<void> => {
      const before = await dump(db)
      const w = start({ TEST_HOLD_TX_MS: '20000' })
      await w.waitFor((l) => l.event === 'tx_hold', 'the transaction to be held')
      w.kill('SIGKILL')
      t.equal((await w.exited).signal, 'SIGKILL')
      t.same(await dump(db), before, `killed inside the transaction (${what}): no trace`)
      t.same(await invariants(db), [], `invariants hold after the kill (${what})`)
    }

    // Bootstrap killed inside its transaction: the store stays empty; the next worker bootstraps it.
    writeClock(clock, T0)
    await killInsideTx('bootstrap')
    t.equal((await dump(db)).length, 0)

    // SIGTERM while a tick holds its transaction: the tick commits, then the worker exits 0.
    const term = start({ TEST_HOLD_TX_MS: '300' })
    await term.waitFor((l) => l.event === 'tx_hold', 'the bootstrap transaction')
    term.kill('SIGTERM')
    t.equal((await term.exited).code, 0, 'clean exit on SIGTERM mid-tick')
    t.ok(term.lines.some((l) => l.event === 'shutdown'), 'logged the shutdown')
    t.equal((await dump(db)).length, 1, 'the held tick committed before the exit')
    t.same(await invariants(db), [])

    // Pre-publish and activation transactions killed, twice each.
    writeClock(clock, S(300))
    await killInsideTx('pre-publish')
    const once = start()
    await once.waitFor((l) => l.event === 'scheduled', 'a worker to finish its boot tick')
    once.kill('SIGTERM')
    await once.exited
    t.same((await dump(db) as Array<{ state: string }>).map((r) => r.state).sort(), ['active', 'pending'])
    writeClock(clock, S(400))
    await killInsideTx('activation')

    // Random kills while simulated time runs fast (a rotation every few ticks, keys generated constantly).
    let now = S(400)
    for (let i = 0; i < RANDOM_KILLS; i++) {
      const w = start()
      let running = true
      const driver = (async () => {
        while (running) {
          now += 50_000
          writeClock(clock, now)
          await delay(10)
        }
      })()
      // Kill at a random moment after the worker starts its boot tick, so the kill lands among ticks.
      await w.waitFor((l) => l.event === 'start', 'the worker to start ticking')
      await delay(Math.floor(Math.random() * 600))
      w.kill('SIGKILL')
      await w.exited
      running = false
      await driver
      t.same(await invariants(db), [], `invariants hold after random kill ${i + 1} (${w.lines.filter((l) => l.event === 'tick').length} ticks done)`)
    }

    // The store is still usable: a worker boots and ticks normally.
    const after = start()
    await after.waitFor((l) => l.event === 'scheduled', 'a worker to start after the crashes')
    after.kill('SIGINT')
    t.equal((await after.exited).code, 0, 'clean exit on SIGINT')
    t.same(await invariants(db), [])
  })
}
