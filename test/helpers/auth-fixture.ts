import { randomBytes } from 'node:crypto'
import { Writable } from 'node:stream'
import pino from 'pino'
import { authConfigFromEnv, type AuthConfig } from '../../auth/config.js'
import { buildAuthService, type AuthService } from '../../auth/server.js'
import { keySecretsFromList } from '../../store/crypto.js'
import type { Db } from '../../store/db.js'
import { DEFAULT_KEY_TIMINGS } from '../../store/key-timings.js'
import { openKeyStore, type KeyStore } from '../../store/keys.js'
import { openClientStore, type ClientStore } from '../../store/clients.js'
import { PasswordHasher, type ScryptFn } from '../../store/password.js'
import { openRefreshStore, type RefreshStore } from '../../store/refresh.js'
import { openUserStore, type UserStore } from '../../store/users.js'
import type { TestBackend } from './backends.js'

/** Cheap scrypt parameters for tests: the code path is the same, the cost is ~1 ms. */
export const TEST_SCRYPT = { N: 1024, r: 8, p: 1 }

export interface AuthFixture {
  service: AuthService
  config: AuthConfig
  keys: KeyStore
  users: UserStore
  clients: ClientStore
  refresh: RefreshStore
  hasher: PasswordHasher
  secrets: string[]
  /** The injected clock (epoch ms); move it with `clock.now += ms`. */
  clock: { now: number }
  /** Log lines written by the service (JSON-parsed). */
  logs: Array<Record<string, unknown>>
}

export interface FixtureOptions {
  env?: Record<string, string>
  scrypt?: ScryptFn
  /** Create an active key first. @defaultValue true */
  activeKey?: boolean
  /** Key-encryption secrets, to share a store's keys with another fixture. @defaultValue a new random one */
  secrets?: string[]
}

/** A full auth service (both apps, not listening) over a test backend, with an injected clock. */
export async function authFixture (backend: TestBackend, opts: FixtureOptions = {}): Promise<AuthFixture> {
  const db: Db = backend.db
  const clock = { now: Date.now() }
  const now = (): number => clock.now
  const config = authConfigFromEnv({ AUTH_KEY_POLL_INTERVAL: '100ms', ...opts.env }, DEFAULT_KEY_TIMINGS)
  const secrets = opts.secrets ?? [randomBytes(32).toString('base64url')]
  const keys = await openKeyStore(db, { secrets: keySecretsFromList(secrets) })
  if (opts.activeKey ?? true) await keys.rotateNow({ activateNow: true })
  const hasher = new PasswordHasher({ params: TEST_SCRYPT, ...(opts.scrypt !== undefined ? { scrypt: opts.scrypt } : {}) })
  const users = await openUserStore(db, { hasher, now })
  const clients = await openClientStore(db, { now })
  const refresh = await openRefreshStore(db, { idleTtl: config.refreshIdleTtl, absoluteTtl: config.refreshAbsoluteTtl, now })
  const logs: Array<Record<string, unknown>> = []
  const stream = new Writable({
    write (chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString().split('\n')) if (line !== '') logs.push(JSON.parse(line) as Record<string, unknown>)
      cb()
    }
  })
  const service = await buildAuthService({
    config, db, keys, users, clients, refresh, now, defaultMetrics: false,
    loggerInstance: pino({ level: 'info' }, stream)
  })
  return { service, config, keys, users, clients, refresh, hasher, secrets, clock, logs }
}
