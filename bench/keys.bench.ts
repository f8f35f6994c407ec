import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import pg from 'pg'
import { tickDecision } from '../store/key-lifecycle.js'
import { keySecretsFromList } from '../store/crypto.js'
import { openDb, type Db } from '../store/index.js'
import { DEFAULT_KEY_TIMINGS } from '../store/key-timings.js'
import { generateSigningKey, openKeyStore } from '../store/keys.js'

/**
 * Information, not a gate: what one rotation tick costs (against a bare write transaction on the same
 * store, measured in the same run) and what RSA key generation costs at 2048 and 3072 bits.
 */
const PG_URL = process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test'

async function timeIt (n: number, fn: () => Promise<unknown>): Promise<number> {
  for (let i = 0; i < Math.min(5, n); i++) await fn() // warm-up
  const t0 = process.hrtime.bigint()
  for (let i = 0; i < n; i++) await fn()
  return Number(process.hrtime.bigint() - t0) / 1e6 / n
}

const fmt = (ms: number): string => `${ms.toFixed(3)} ms`

async function benchTick (name: string, db: Db): Promise<void> {
  let now = 1_800_000_000_000
  const store = await openKeyStore(db, { secrets: keySecretsFromList(['bench-secret-0123456789abcdefghijklmnopq']), now: () => now, timings: DEFAULT_KEY_TIMINGS })
  await store.rotateNow({ activateNow: true })
  await store.rotateNow({ activateNow: false })
  await db.run('CREATE TABLE IF NOT EXISTS bench_baseline (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)')
  await db.run('INSERT INTO bench_baseline (id, n) VALUES (1, 0) ON CONFLICT (id) DO NOTHING')
  const n = 300
  const baseline = await timeIt(n, async () => await db.transaction(async (tx) => {
    await tx.lock('bench')
    await tx.query('SELECT n FROM bench_baseline WHERE id = 1')
  }))
  const idle = await timeIt(n, async () => await store.apply(tickDecision(DEFAULT_KEY_TIMINGS)))
  const signing = await timeIt(n, async () => await store.activeSigningKey())
  // A changing tick without key generation: activate the pending key, then re-create one via rotateNow outside the timing.
  let activate = 0
  const rounds = 20
  for (let i = 0; i < rounds; i++) {
    now += DEFAULT_KEY_TIMINGS.prePublish * 1000
    const t0 = process.hrtime.bigint()
    await store.apply(tickDecision(DEFAULT_KEY_TIMINGS))
    activate += Number(process.hrtime.bigint() - t0) / 1e6
    await store.rotateNow({ activateNow: false })
  }
  activate /= rounds
  console.log(`${name}: baseline write transaction (lock + 1 SELECT) ${fmt(baseline)}`)
  console.log(`${name}: idle tick (nothing due)               ${fmt(idle)}  = ${(idle / baseline).toFixed(1)}x baseline`)
  console.log(`${name}: activation tick (retire + activate)   ${fmt(activate)}  = ${(activate / baseline).toFixed(1)}x baseline`)
  console.log(`${name}: activeSigningKey() (cached KeyObject)  ${fmt(signing)}  = ${(signing / baseline).toFixed(1)}x baseline`)
}

const gen = 12
const g2048 = await timeIt(gen, async () => await generateSigningKey(2048))
const g3072 = await timeIt(Math.ceil(gen / 2), async () => await generateSigningKey(3072))
console.log(`key generation RSA 2048: ${fmt(g2048)} per key (mean of ${gen})`)
console.log(`key generation RSA 3072: ${fmt(g3072)} per key = ${(g3072 / g2048).toFixed(1)}x RSA 2048`)

const dir = mkdtempSync(join(tmpdir(), 'portcullis-bench-'))
const sqlite = openDb({ sqlitePath: join(dir, 'bench.db') })
try {
  await benchTick('sqlite', sqlite)
} finally {
  await sqlite.close()
  rmSync(dir, { recursive: true, force: true })
}

const schema = `bench_${process.pid}`
const probe = new pg.Client({ connectionString: PG_URL, connectionTimeoutMillis: 2000 })
const reachable = await probe.connect().then(() => true, () => false)
if (reachable) {
  const db = openDb({ databaseUrl: PG_URL, pgSchema: schema, pgPoolSize: 2 })
  try {
    await benchTick('postgres', db)
  } finally {
    await db.close()
    await probe.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`)
  }
} else {
  console.log(`postgres: skipped (${PG_URL} unreachable)`)
}
await probe.end().catch(() => {})
