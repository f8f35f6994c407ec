/**
 * A key observer for drills: reads the key rows from the drill's database every `everyMs` (and,
 * optionally, the JWKS some auth replicas serve) and checks, at every observation:
 * - exactly one `active` key (min/max of the count are kept);
 * - no key leaves the store before its prune time (retired/revoked + KEY_RETIRE_WINDOW), and no key
 *   goes back in its lifecycle (pending -> active -> retired -> gone);
 * - every kid `requiredKids(at)` names (the kids of tokens still unexpired) is in every JWKS.
 * It also keeps every activation it saw (kid, activatedAt), for counting rotations.
 */
import type pg from 'pg'
import { jwksKids, readKeys, type KeyRow } from './tokens.js'
import { KEY_EVENTS_TABLE } from '../../store/keys-schema.js'

export interface Violation { at: number, what: string }

const ORDER: Record<KeyRow['state'], number> = { pending: 0, active: 1, retired: 2, revoked: 3 }

export class KeyObserver {
  observations = 0
  jwksObservations = 0
  minActive = Infinity
  maxActive = -Infinity
  readonly violations: Violation[] = []
  /** Read failures (database or JWKS), with time: not violations by themselves. */
  readonly readErrors: Violation[] = []
  /** Every key seen active: kid -> activatedAt (epoch ms). */
  readonly activations = new Map<string, number>()
  /** The last row seen of every kid (gone ones too). */
  readonly lastSeen = new Map<string, KeyRow & { seenAt: number }>()
  /** The latest rows. */
  current: KeyRow[] = []
  readonly #o: { pool: pg.Pool, everyMs: number, retireWindowMs: number, jwks: string[], requiredKids?: (at: number) => Map<string, number> }
  #stopped = false
  #loop: Promise<void> | undefined

  /**
   * `requiredKids(at)`: kid -> the latest exp (epoch ms) of a token it signed that is unexpired at `at`;
   * each must be in every JWKS of `jwks` (URLs) read at `at`.
   */
  constructor (o: { pool: pg.Pool, everyMs?: number, retireWindowMs: number, jwks?: string[], requiredKids?: (at: number) => Map<string, number> }) {
    this.#o = { everyMs: 200, jwks: [], ...o }
  }

  start (): void {
    this.#loop = (async () => {
      while (!this.#stopped) {
        const t0 = Date.now()
        await this.observe()
        await new Promise((resolve) => setTimeout(resolve, Math.max(0, this.#o.everyMs - (Date.now() - t0))))
      }
    })()
  }

  async stop (): Promise<void> {
    this.#stopped = true
    await this.#loop
  }

  #violate (at: number, what: string): void {
    if (this.violations.length < 200) this.violations.push({ at, what })
  }

  /** One observation (the loop calls it; a drill may call it at a moment of its choosing too). */
  async observe (): Promise<void> {
    const jwksReads = this.#o.jwks.map(async (url) => {
      try {
        const kids = await jwksKids(url)
        return { url, kids, at: Date.now() }
      } catch (err) {
        this.readErrors.push({ at: Date.now(), what: `${url}: ${(err as Error).message}` })
        return undefined
      }
    })
    let rows: KeyRow[]
    try {
      rows = await readKeys(this.#o.pool)
    } catch (err) {
      this.readErrors.push({ at: Date.now(), what: `database: ${(err as Error).message}` })
      await Promise.all(jwksReads)
      return
    }
    const at = Date.now()
    this.observations++
    const active = rows.filter((r) => r.state === 'active').length
    this.minActive = Math.min(this.minActive, active)
    this.maxActive = Math.max(this.maxActive, active)
    if (active !== 1) this.#violate(at, `${active} active keys (${rows.map((r) => `${r.kid.slice(0, 8)}:${r.state}`).join(' ')})`)
    const now = new Set(rows.map((r) => r.kid))
    for (const r of rows) {
      const prev = this.lastSeen.get(r.kid)
      if (prev !== undefined && ORDER[r.state] < ORDER[prev.state]) this.#violate(at, `key ${r.kid} went back from ${prev.state} to ${r.state}`)
      if (r.activatedAt !== null) this.activations.set(r.kid, r.activatedAt)
      this.lastSeen.set(r.kid, { ...r, seenAt: at })
    }
    for (const [kid, prev] of this.lastSeen) {
      if (now.has(kid) || prev.seenAt === -1) continue
      const gone = prev.state === 'retired' ? prev.retiredAt : prev.state === 'revoked' ? prev.revokedAt : null
      if (gone === null) this.#violate(at, `key ${kid} disappeared while ${prev.state}`)
      else if (at < gone + this.#o.retireWindowMs) this.#violate(at, `key ${kid} disappeared ${gone + this.#o.retireWindowMs - at} ms before its prune time`)
      this.lastSeen.set(kid, { ...prev, seenAt: -1 }) // reported once
    }
    this.current = rows
    for (const j of await Promise.all(jwksReads)) {
      if (j === undefined) continue
      this.jwksObservations++
      for (const [kid, exp] of this.#o.requiredKids?.(j.at) ?? []) {
        if (!j.kids.includes(kid)) this.#violate(j.at, `${j.url} lacks kid ${kid} of a token unexpired for ${exp - j.at} ms more`)
      }
    }
  }

  /** Activations (kid, activatedAt) within [from, to], oldest first. */
  activationsBetween (from: number, to: number): Array<{ kid: string, at: number }> {
    return [...this.activations].filter(([, at]) => at >= from && at <= to).map(([kid, at]) => ({ kid, at })).sort((a, b) => a.at - b.at)
  }
}

/** The store's own log of key changes (portcullis_key_events): every create/activate/retire/prune committed. */
export async function readKeyEvents (pool: pg.Pool): Promise<Array<{ at: number, kid: string, event: string, detail: string | null }>> {
  const r = await pool.query(`SELECT at, kid, event, detail FROM ${KEY_EVENTS_TABLE} ORDER BY at, kid`)
  return r.rows.map((row: Record<string, unknown>) => ({ at: Number(row.at), kid: String(row.kid), event: String(row.event), detail: row.detail === null ? null : String(row.detail) }))
}
