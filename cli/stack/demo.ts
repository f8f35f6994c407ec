import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import type { Env } from '../../lib/env.js'
import type { Db } from '../../store/index.js'
import { PasswordHasher, scryptParamsFromEnv } from '../../store/password.js'
import { openClientStore } from '../../store/clients.js'
import { openUserStore } from '../../store/users.js'

/** Written on first demo start; its presence means "already seeded" and it holds the demo client. */
export const DEMO_FILE = 'demo-credentials.json'

export interface DemoUser { username: string, password: string, role: string, permissions: string[], note: string }

/**
 * Fixed, public demo accounts so the README walkthrough can be pasted as is. Demo mode only: never
 * start a stack reachable by others with them (`portcullis start --no-demo`, then `portcullis users add`).
 */
export const DEMO_USERS: readonly DemoUser[] = [
  { username: 'alice', password: 'alice-demo-pass', role: 'user', permissions: ['order:create', 'order:read'], note: 'may place orders' },
  { username: 'bob', password: 'bob-demo-pass', role: 'user', permissions: ['order:read'], note: 'may not place orders (403)' },
  { username: 'admin', password: 'admin-demo-pass', role: 'admin', permissions: ['order:create', 'order:read', 'product:write'], note: 'sees every user and order, may add products' }
]

/**
 * AUTH_LOGIN_USER_MAX that `portcullis start` gives auth in demo mode (unless set): logins per
 * username per AUTH_LOGIN_USER_WINDOW (5 minutes). The demo passwords are public, so the limit guards
 * nothing there; the walkthrough logs alice and bob in once per paste.
 */
export const DEMO_LOGIN_USER_MAX = 100

export const DEMO_CLIENT_ID = 'order-service'
export const DEMO_CLIENT_SCOPES = ['products:read']

export interface DemoState {
  users: readonly DemoUser[]
  client: { clientId: string, clientSecret: string, scopes: string[] }
  createdAt: string
}

export function readDemoState (dataDir: string): DemoState | undefined {
  const path = join(dataDir, DEMO_FILE)
  if (!existsSync(path)) return undefined
  return JSON.parse(readFileSync(path, 'utf8')) as DemoState
}

/**
 * Creates the demo users and the demo service client unless an earlier start did. An account that
 * already exists (created by hand) is left alone. Returns the state and whether it was created now.
 */
export async function seedDemo (db: Db, dataDir: string, env: Env): Promise<{ state: DemoState, created: boolean }> {
  const existing = readDemoState(dataDir)
  if (existing !== undefined) return { state: existing, created: false }
  // Hashed with the parameters auth uses (PASSWORD_SCRYPT_*), so the first login need not re-hash.
  const users = await openUserStore(db, { hasher: new PasswordHasher({ params: scryptParamsFromEnv(env) }) })
  for (const u of DEMO_USERS) {
    if (await users.get(u.username) === null) {
      await users.add({ username: u.username, password: u.password, role: u.role, permissions: u.permissions })
    }
  }
  const clients = await openClientStore(db)
  // The secret exists in clear only when created: a client left from a half-finished run is re-made.
  if (await clients.get(DEMO_CLIENT_ID) !== null) await clients.remove(DEMO_CLIENT_ID)
  const { clientSecret } = await clients.add({ clientId: DEMO_CLIENT_ID, scopes: DEMO_CLIENT_SCOPES })
  const state: DemoState = {
    users: DEMO_USERS,
    client: { clientId: DEMO_CLIENT_ID, clientSecret, scopes: DEMO_CLIENT_SCOPES },
    createdAt: new Date().toISOString()
  }
  writeFileSync(join(dataDir, DEMO_FILE), JSON.stringify(state, null, 2) + '\n', { mode: 0o600 })
  return { state, created: true }
}
