/**
 * Tokens and keys for drills: create a user with `portcullis users add`, log in at an auth
 * replica, keep a pool of fresh tokens fetched alternately from several replicas (every token
 * handed out is recorded with its kid, exp and replica), read the JWKS an auth replica serves, and
 * read the key states from the store (the database directly, for frequent observation, or through
 * `portcullis keys list --json`).
 */
import { randomBytes } from 'node:crypto'
import type pg from 'pg'
import { runCli } from '../../test/helpers/rotation-workers.js'
import { claimsOf, headerOf } from '../../test/helpers/stack.js'
import { KEYS_TABLE } from '../../store/keys-schema.js'
import type { Proc } from './processes.js'

export { claimsOf, headerOf }

export interface DrillUser { username: string, password: string, id: string }

/**
 * `portcullis users add <name> --permissions ...` against the store in `env` (DATABASE_URL...);
 * the generated password is read from the command's output. A random name: login counters on the
 * shared Redis are per username.
 */
export async function addUser (env: Record<string, string>, opts: { username?: string, role?: string, permissions?: string[] } = {}): Promise<DrillUser> {
  const username = opts.username ?? `drill${randomBytes(4).toString('hex')}`
  const args = ['users', 'add', username, ...(opts.role !== undefined ? ['--role', opts.role] : []), ...(opts.permissions !== undefined ? ['--permissions', opts.permissions.join(',')] : [])]
  const r = await runCli(args, env)
  const password = /password \(shown once\): (\S+)/.exec(r.stdout)?.[1]
  const id = /\(id ([^,\s)]+)/.exec(r.stdout)?.[1]
  if (r.code !== 0 || password === undefined || id === undefined) throw new Error(`portcullis users add failed (${r.code}): ${r.stdout}${r.stderr}`)
  return { username, password, id }
}

/** A token as a drill tracks it. */
export interface IssuedToken {
  token: string
  kid: string
  /** epoch seconds */
  exp: number
  iat: number
  /** The auth replica that issued it (its name). */
  from: string
  /** When the drill received it (epoch ms). */
  at: number
}

export function describeToken (token: string, from: string): IssuedToken {
  const c = claimsOf(token)
  return { token, kid: String(headerOf(token).kid), exp: Number(c.exp), iat: Number(c.iat), from, at: Date.now() }
}

/** POST /auth/login; throws with the status and body on anything but 200. */
export async function login (auth: Proc, user: { username: string, password: string }): Promise<IssuedToken & { refresh: string }> {
  const res = await fetch(`${auth.base}/auth/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ username: user.username, password: user.password }),
    signal: AbortSignal.timeout(10_000)
  })
  const text = await res.text()
  if (res.status !== 200) throw new LoginError(auth.name, res.status, text)
  const body = JSON.parse(text) as { access_token: string, refresh_token: string }
  return { ...describeToken(body.access_token, auth.name), refresh: body.refresh_token }
}

export class LoginError extends Error {
  readonly status: number
  constructor (from: string, status: number, body: string) {
    super(`login at ${from}: ${status} ${body.slice(0, 200)}`)
    this.status = status
  }
}

/** The kids an auth replica's /.well-known/jwks.json lists now. */
export async function jwksKids (auth: Proc | string): Promise<string[]> {
  const url = typeof auth === 'string' ? auth : `${auth.base}/.well-known/jwks.json`
  const res = await fetch(url, { signal: AbortSignal.timeout(5000) })
  if (res.status !== 200) throw new Error(`${url}: ${res.status}`)
  const body = await res.json() as { keys: Array<{ kid: string }> }
  return body.keys.map((k) => k.kid)
}

/** One stored key as the drills observe it (epoch ms; null when not set). */
export interface KeyRow {
  kid: string
  state: 'pending' | 'active' | 'retired' | 'revoked'
  createdAt: number
  activatesAt: number | null
  activatedAt: number | null
  retiredAt: number | null
  revokedAt: number | null
}

const n = (v: unknown): number | null => (v === null || v === undefined ? null : Number(v))

/** The key rows straight from the drill's database (cheap: for observations every 100-200 ms). */
export async function readKeys (pool: pg.Pool): Promise<KeyRow[]> {
  const r = await pool.query(`SELECT kid, state, created_at, activates_at, activated_at, retired_at, revoked_at FROM ${KEYS_TABLE} ORDER BY created_at, kid`)
  return r.rows.map((row: Record<string, unknown>) => ({
    kid: String(row.kid),
    state: row.state as KeyRow['state'],
    createdAt: Number(row.created_at),
    activatesAt: n(row.activates_at),
    activatedAt: n(row.activated_at),
    retiredAt: n(row.retired_at),
    revokedAt: n(row.revoked_at)
  }))
}

/** `portcullis keys list --json` with the store and timings of `env` (slow: a process start). */
export async function keysList (env: Record<string, string>): Promise<Array<Record<string, unknown>>> {
  const r = await runCli(['keys', 'list', '--json'], env)
  if (r.code !== 0) throw new Error(`portcullis keys list failed (${r.code}): ${r.stderr}`)
  return JSON.parse(r.stdout) as Array<Record<string, unknown>>
}

/**
 * Fresh tokens for load, fetched by login alternately from `auths` every `everyMs` in the
 * background. `current()` gives the newest token that still has `minLifeMs` to live (so a 401 on it
 * can only be a false one); `issued` records every token handed out.
 */
export class TokenPool {
  readonly issued: IssuedToken[] = []
  /** Failed token requests (not 503). */
  readonly failures: Array<{ at: number, from: string, status: number, detail: string }> = []
  /**
   * 503 temporarily_unavailable answers: auth refuses to sign while its view of the store is older
   * than SIGNER_PROPAGATION (by design; a starved process with a short P shows it). Retried later.
   */
  readonly unavailable: Array<{ at: number, from: string, detail: string }> = []
  readonly #auths: () => Proc[]
  readonly #user: DrillUser
  readonly #everyMs: number
  readonly #minLifeMs: number
  #next = 0
  #stopped = false
  #loop: Promise<void> | undefined

  /** `auths` may be a function: the replicas to use now (restarted ones come back as new Procs). */
  constructor (opts: { auths: Proc[] | (() => Proc[]), user: DrillUser, everyMs?: number, minLifeMs?: number }) {
    const list = opts.auths
    this.#auths = typeof list === 'function' ? list : () => list
    this.#user = opts.user
    this.#everyMs = opts.everyMs ?? 250
    this.#minLifeMs = opts.minLifeMs ?? 1500
  }

  /** One login at the next replica in turn; records a failure (and returns undefined) instead of throwing. */
  async fetchOne (): Promise<IssuedToken | undefined> {
    const auths = this.#auths()
    const auth = auths[this.#next++ % auths.length]!
    try {
      const t = await login(auth, this.#user)
      const { refresh: _r, ...tok } = t
      this.issued.push(tok)
      return tok
    } catch (err) {
      const status = err instanceof LoginError ? err.status : 0
      if (status === 503) this.unavailable.push({ at: Date.now(), from: auth.name, detail: (err as Error).message })
      else this.failures.push({ at: Date.now(), from: auth.name, status, detail: (err as Error).message })
      return undefined
    }
  }

  /** Starts the background loop (after one token from each replica). */
  async start (): Promise<void> {
    for (let i = 0; i < this.#auths().length; i++) {
      let tries = 0
      while (await this.fetchOne() === undefined) {
        if (++tries >= 5) throw new Error(`no token from ${this.#auths()[i]!.name}: ${JSON.stringify(this.failures.at(-1) ?? this.unavailable.at(-1))}`)
        this.#next-- // the same replica again
        await new Promise((resolve) => setTimeout(resolve, 200))
      }
    }
    this.#loop = (async () => {
      while (!this.#stopped) {
        await new Promise((resolve) => setTimeout(resolve, this.#everyMs))
        if (!this.#stopped) await this.fetchOne()
      }
    })()
  }

  async stop (): Promise<void> {
    this.#stopped = true
    await this.#loop
  }

  /**
   * A token with at least `minLifeMs` left, taken round-robin from the newest few (so tokens of every
   * replica and of the previous key keep being used), or undefined when none is fresh enough.
   */
  current (spread = 4): IssuedToken | undefined {
    const now = Date.now()
    const fresh: IssuedToken[] = []
    for (let i = this.issued.length - 1; i >= 0 && fresh.length < spread; i--) {
      const t = this.issued[i]!
      if (t.exp * 1000 - now >= this.#minLifeMs) fresh.push(t)
    }
    if (fresh.length === 0) return undefined
    return fresh[(this.#pick++) % fresh.length]
  }

  /** The oldest token that still has `minLifeMs` to live: exercises keys after they stopped signing. */
  oldest (): IssuedToken | undefined {
    const now = Date.now()
    for (let i = this.#oldestFrom; i < this.issued.length; i++) {
      if (this.issued[i]!.exp * 1000 - now >= this.#minLifeMs) { this.#oldestFrom = i; return this.issued[i] }
    }
    return undefined
  }

  /** kid -> latest exp (epoch ms) of the tokens handed out that are unexpired at `at`: what every JWKS must still hold. */
  unexpiredKids (at: number): Map<string, number> {
    const m = new Map<string, number>()
    for (let i = this.issued.length - 1; i >= 0; i--) {
      const t = this.issued[i]!
      const exp = t.exp * 1000
      if (exp > at && (m.get(t.kid) ?? 0) < exp) m.set(t.kid, exp)
    }
    return m
  }

  #pick = 0
  #oldestFrom = 0
}
