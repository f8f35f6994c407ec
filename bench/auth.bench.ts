import { randomBytes, sign as cryptoSign } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import { authConfigFromEnv } from '../auth/config.js'
import { issueAccessToken, type AuthContext } from '../auth/context.js'
import { buildAuthService } from '../auth/server.js'
import { openClientStore } from '../store/clients.js'
import { keySecretsFromList } from '../store/crypto.js'
import { openDb } from '../store/index.js'
import { DEFAULT_KEY_TIMINGS } from '../store/key-timings.js'
import { openKeyStore } from '../store/keys.js'
import { PasswordHasher, DEFAULT_SCRYPT_PARAMS } from '../store/password.js'
import { openRefreshStore } from '../store/refresh.js'
import { openUserStore } from '../store/users.js'

/**
 * Token issuance against raw `crypto.sign` RSA-2048 of a same-sized signing input, in this run on
 * this machine. Target: issuance >= 0.85x raw sign. Also reported: /oauth/token through
 * Fastify (inject, SQLite store) and the login rate with the default scrypt parameters, which is
 * bounded by scrypt by design.
 */
// Many short interleaved rounds, ratios taken per round: robust to load that drifts during the run.
const ROUNDS = 15
const N = 400

const dir = mkdtempSync(join(tmpdir(), 'portcullis-bench-'))
const db = openDb({ sqlitePath: join(dir, 'portcullis.db') })
const keys = await openKeyStore(db, { secrets: keySecretsFromList([randomBytes(32).toString('base64url')]) })
await keys.rotateNow({ activateNow: true })
// Login limits out of the way: the bench measures the work, not the brute-force guard.
const config = authConfigFromEnv({ AUTH_LOGIN_USER_MAX: '1000000', AUTH_LOGIN_IP_MAX: '1000000' }, DEFAULT_KEY_TIMINGS)
const users = await openUserStore(db, { hasher: new PasswordHasher({ params: DEFAULT_SCRYPT_PARAMS }) })
const clients = await openClientStore(db)
const refresh = await openRefreshStore(db)
const service = await buildAuthService({ config, db, keys, users, clients, refresh, defaultMetrics: false })
const ctx = { config, signer: service.signer, now: Date.now } as unknown as AuthContext
const claims = { sub: '6f1c2a0e-8d3b-4c55-9a57-2b1f0f8e9d11', role: 'admin', permissions: ['orders:read', 'orders:write', 'products:read'] }

const sample = issueAccessToken(ctx, claims).accessToken
const input = Buffer.from(sample.slice(0, sample.lastIndexOf('.')))
const privateKey = (await keys.activeSigningKey())!.privateKey

function raw (): number {
  const t0 = performance.now()
  for (let i = 0; i < N; i++) cryptoSign('sha256', input, privateKey)
  return (performance.now() - t0) / N
}

function issue (): number {
  const t0 = performance.now()
  for (let i = 0; i < N; i++) issueAccessToken(ctx, claims)
  return (performance.now() - t0) / N
}

const { clientSecret } = await clients.add({ clientId: 'bench', scopes: ['a', 'b'] })
const form = new URLSearchParams({ grant_type: 'client_credentials', client_id: 'bench', client_secret: clientSecret }).toString()
async function http (n = N / 4): Promise<number> {
  const t0 = performance.now()
  for (let i = 0; i < n; i++) {
    const res = await service.app.inject({ method: 'POST', url: '/oauth/token', headers: { 'content-type': 'application/x-www-form-urlencoded' }, payload: form })
    if (res.statusCode !== 200) throw new Error(`token endpoint: ${res.statusCode}`)
  }
  return (performance.now() - t0) / n
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!
raw()
issue()
await http(100)
const r: number[] = []
const ours: number[] = []
const viaHttp: number[] = []
for (let i = 0; i < ROUNDS; i++) {
  r.push(raw())
  ours.push(issue())
  viaHttp.push(await http())
}
const perSec = (ms: number): string => `${Math.round(1000 / ms)}/s`
const rawMs = median(r)
const oursMs = median(ours)
const httpMs = median(viaHttp)
const issueRatio = median(r.map((x, i) => x / ours[i]!))
const httpRatio = median(r.map((x, i) => x / viaHttp[i]!))
console.log(`raw crypto.sign RSA-2048 (${input.length}-byte input): ${perSec(rawMs)}`)
console.log(`issueAccessToken (claims, JSON, base64url, sign): ${perSec(oursMs)}  ratio ${issueRatio.toFixed(3)}x raw (median of ${ROUNDS} rounds; target >= 0.85x)`)
console.log(`POST /oauth/token client_credentials (inject, SQLite): ${perSec(httpMs)}  ratio ${httpRatio.toFixed(3)}x raw`)

// Logins: scrypt N=2^15 r=8 p=3 (the defaults) runs in libuv's pool (4 threads), so concurrent logins overlap.
// Interleaved with the same amount of raw scrypt work at the same concurrency.
await users.add({ username: 'bench', password: 'bench password' })
const CONCURRENCY = 4
const PER_ROUND = 12
const hasher = new PasswordHasher({ params: DEFAULT_SCRYPT_PARAMS })
async function concurrently (fn: () => Promise<void>): Promise<number> {
  let started = 0
  const t0 = performance.now()
  await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
    while (started < PER_ROUND) {
      started++
      await fn()
    }
  }))
  return (performance.now() - t0) / PER_ROUND
}
const loginOnce = async (): Promise<void> => {
  const res = await service.app.inject({ method: 'POST', url: '/auth/login', payload: { username: 'bench', password: 'bench password' } })
  if (res.statusCode !== 200) throw new Error(`login: ${res.statusCode}`)
}
const scryptOnce = async (): Promise<void> => { await hasher.verifyDummy('bench password') }
const loginRounds: number[] = []
const scryptRounds: number[] = []
for (let i = 0; i < 3; i++) {
  loginRounds.push(await concurrently(loginOnce))
  scryptRounds.push(await concurrently(scryptOnce))
}
const p = DEFAULT_SCRYPT_PARAMS
console.log(`raw scrypt N=${p.N} r=${p.r} p=${p.p}, ${CONCURRENCY} concurrent: ${perSec(median(scryptRounds))}`)
console.log(`POST /auth/login, ${CONCURRENCY} concurrent: ${perSec(median(loginRounds))}  ratio ${median(scryptRounds.map((x, i) => x / loginRounds[i]!)).toFixed(3)}x raw scrypt (bounded by scrypt by design)`)

await service.close()
await db.close()
rmSync(dir, { recursive: true, force: true })
if (issueRatio < 0.85) process.exitCode = 1
