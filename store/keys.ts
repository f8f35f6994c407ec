import { createPrivateKey, generateKeyPair, type KeyObject } from 'node:crypto'
import { promisify } from 'node:util'
import type { Logger } from 'pino'
import type { Db, Tx } from './db.js'
import { UnsealError, type KeySecrets } from './crypto.js'
import { KeyCorruptError, KeyInvariantError, KeyNotFoundError, KeySecretError, KeyStateError } from './key-errors.js'
import { readKeyRows, recordFromRow, type KeyRecord } from './key-records.js'
import { DEFAULT_KEY_TIMINGS, type KeyTimings } from './key-timings.js'
import { jwkThumbprint, rsaPublicMembers, toPublicJwk, type PublicJwk, type RsaPublicMembers } from './jwk.js'
import { KEY_EVENTS_TABLE, KEYS_TABLE, keysComponent } from './keys-schema.js'
import { migrate } from './migrate.js'

export type { PublicJwk } from './jwk.js'
export type { KeyRecord, KeyState } from './key-records.js'
export type { KeySecrets } from './crypto.js'

export const KEY_SIZES = [2048, 3072, 4096] as const
export type KeySize = typeof KEY_SIZES[number]
export const DEFAULT_KEY_SIZE: KeySize = 2048
/** Serializes every key-changing transaction (PostgreSQL advisory lock; SQLite's write lock already does). */
export const KEYS_LOCK = 'portcullis_keys'

export interface SigningKey { kid: string, privateKey: KeyObject, activatedAt: number /* epoch ms */ }

/** A freshly generated key, sealed and ready to insert. Generated outside any transaction (slow). */
export interface GeneratedKey { kid: string, keySize: KeySize, publicKey: RsaPublicMembers, privateDer: Buffer }

/** One step of a lifecycle decision; the store applies a list of them atomically. */
export type KeyChange =
  | { op: 'create', state: 'pending' | 'active', activatesAt: number }
  | { op: 'activate', kid: string }
  | { op: 'retire', kid: string }
  | { op: 'revoke', kid: string }
  | { op: 'prune', kid: string }

/** What was applied, with the kid a `create` produced; `reseal` is the store re-encrypting under the first secret. */
export type AppliedChange = { op: KeyChange['op'] | 'reseal', kid: string, state?: KeyState, at: number }
type KeyState = KeyRecord['state']

/** Decides the changes for the store as it is at `now`; pure, called again inside the transaction. */
export type KeyDecision = (keys: readonly KeyRecord[], now: number) => KeyChange[]

export interface ApplyOptions {
  keySize?: KeySize
  /** Test hook: runs inside the transaction after the writes, before the commit. */
  beforeCommit?: () => Promise<void>
  /** Checked before generating a key and before opening the transaction. */
  signal?: AbortSignal
}

export interface ApplyResult {
  changes: AppliedChange[]
  /** The key generated for a `create` that another worker made unnecessary (discarded). */
  discardedKey: boolean
  now: number
  keys: KeyRecord[]
}

export interface RotateResult { kid: string, state: 'pending' | 'active', activatesAt: number, created: boolean }

export interface KeyStoreOptions {
  secrets: KeySecrets
  /** Epoch milliseconds. @defaultValue Date.now */
  now?: () => number
  /** Used for the pre-publish window of `rotateNow`. @defaultValue DEFAULT_KEY_TIMINGS */
  timings?: KeyTimings
  /** @defaultValue 2048 */
  keySize?: KeySize
  /** Receives one line per state change. */
  log?: Logger
}

const generateKeyPairAsync = promisify(generateKeyPair)

/** Generates an RSA key (in the libuv thread pool, off the event loop) and derives its kid. */
export async function generateSigningKey (keySize: KeySize = DEFAULT_KEY_SIZE): Promise<GeneratedKey> {
  const { privateKey } = await generateKeyPairAsync('rsa', { modulusLength: keySize, publicExponent: 0x10001 })
  const publicKey = rsaPublicMembers(privateKey)
  return { kid: jwkThumbprint(publicKey), keySize, publicKey, privateDer: privateKey.export({ format: 'der', type: 'pkcs8' }) }
}

const CHANGE_TEXT: Record<AppliedChange['op'], string> = {
  create: 'created',
  activate: 'activated, now signing',
  retire: 'retired, private part destroyed, still published',
  revoke: 'revoked, unpublished, private part destroyed',
  prune: 'pruned',
  reseal: 'private part resealed with the first secret'
}

const RETRY = Symbol('retry')
const MAX_ATTEMPTS = 3

/**
 * Signing keys in the shared store (SQLite or PostgreSQL). Every change runs in one transaction
 * under one lock; the lifecycle's timing rules live with the rotation worker, which hands them in as
 * a `KeyDecision`. Private parts are sealed (AES-256-GCM) and destroyed when a key stops signing.
 */
export class KeyStore {
  readonly #db: Db
  readonly #secrets: KeySecrets
  readonly #now: () => number
  readonly #timings: KeyTimings
  readonly #keySize: KeySize
  readonly #log: Logger | undefined
  #signing: { kid: string, sealed: string, key: SigningKey } | undefined

  constructor (db: Db, opts: KeyStoreOptions) {
    this.#db = db
    this.#secrets = opts.secrets
    this.#now = opts.now ?? Date.now
    this.#timings = opts.timings ?? DEFAULT_KEY_TIMINGS
    this.#keySize = opts.keySize ?? DEFAULT_KEY_SIZE
    this.#log = opts.log
  }

  get secrets (): KeySecrets { return this.#secrets }

  /** Every key, validated (a corrupt row throws KeyCorruptError naming it). */
  async list (): Promise<KeyRecord[]> {
    return (await readKeyRows(this.#db)).map(recordFromRow)
  }

  /** The single active key with its private part decrypted, or null before the first key exists. */
  async activeSigningKey (): Promise<SigningKey | null> {
    const rows = await readKeyRows(this.#db, 'WHERE state = ?', ['active'])
    if (rows.length > 1) throw new KeyInvariantError(`${rows.length} active keys`)
    const row = rows[0]
    if (row === undefined) return null
    const rec = recordFromRow(row)
    const sealed = row.private_sealed!
    const cached = this.#signing
    if (cached?.kid === rec.kid && cached.sealed === sealed) return cached.key
    const key: SigningKey = { kid: rec.kid, privateKey: this.#openPrivate(rec.kid, sealed), activatedAt: rec.activatedAt! }
    this.#signing = { kid: rec.kid, sealed, key }
    return key
  }

  /** The public JWKS: pending, active and retired keys (never revoked ones), public members only. */
  async publicJwks (): Promise<{ keys: PublicJwk[] }> {
    const rows = await readKeyRows(this.#db, 'WHERE state IN (?, ?, ?)', ['pending', 'active', 'retired'])
    return { keys: rows.map(recordFromRow).map((r) => toPublicJwk(r.kid, r.publicKey)) }
  }

  /** Decrypts every stored private part; throws KeySecretError / KeyCorruptError on the first failure. */
  async verifySecrets (): Promise<void> {
    for (const row of await readKeyRows(this.#db, 'WHERE private_sealed IS NOT NULL')) {
      recordFromRow(row)
      this.#openPrivate(row.kid, row.private_sealed!)
    }
  }

  /**
   * `keys rotate`: start a new pending key now (activating after the pre-publish window), or with
   * `activateNow` switch signing at once (to the pending key when there is one, else a new key).
   * On an empty store the first key is active at once either way.
   */
  async rotateNow (opts: { activateNow: boolean, keySize?: KeySize }): Promise<RotateResult> {
    const prePublishMs = this.#timings.prePublish * 1000
    const res = await this.apply((keys, now) => {
      const active = keys.find((k) => k.state === 'active')
      const pending = keys.find((k) => k.state === 'pending')
      if (active === undefined) {
        return pending !== undefined ? [{ op: 'activate', kid: pending.kid }] : [{ op: 'create', state: 'active', activatesAt: now }]
      }
      if (!opts.activateNow) return pending !== undefined ? [] : [{ op: 'create', state: 'pending', activatesAt: now + prePublishMs }]
      const retire: KeyChange = { op: 'retire', kid: active.kid }
      return pending !== undefined ? [retire, { op: 'activate', kid: pending.kid }] : [retire, { op: 'create', state: 'active', activatesAt: now }]
    }, opts.keySize !== undefined ? { keySize: opts.keySize } : {})
    const made = res.changes.find((c) => c.op === 'create' || c.op === 'activate')
    const target = made !== undefined
      ? res.keys.find((k) => k.kid === made.kid)!
      : res.keys.find((k) => k.state === 'pending')!
    return {
      kid: target.kid,
      state: target.state as 'pending' | 'active',
      activatesAt: target.state === 'active' ? target.activatedAt! : target.activatesAt!,
      created: res.changes.some((c) => c.op === 'create')
    }
  }

  /**
   * `keys revoke <kid>`: the key leaves the JWKS at once and its private part is destroyed. Revoking
   * the active key activates a replacement in the same transaction (the pending key, else a new one).
   */
  async revoke (kid: string): Promise<{ kid: string, replacement?: string }> {
    const res = await this.apply((keys) => {
      const k = keys.find((x) => x.kid === kid)
      if (k === undefined) throw new KeyNotFoundError(kid)
      if (k.state === 'revoked') throw new KeyStateError(kid, 'is already revoked')
      if (k.state !== 'active') return [{ op: 'revoke', kid }]
      const pending = keys.find((x) => x.state === 'pending')
      return [{ op: 'revoke', kid }, pending !== undefined ? { op: 'activate', kid: pending.kid } : { op: 'create', state: 'active', activatesAt: 0 }]
    })
    const replacement = res.changes.find((c) => c.op === 'activate' || c.op === 'create')?.kid
    return replacement !== undefined ? { kid, replacement } : { kid }
  }

  /**
   * Applies `decide` atomically. Key generation is slow, so it happens outside the transaction when a
   * snapshot says a key will be needed; inside, the decision is taken again on fresh rows (another
   * worker may have acted meanwhile) and an unneeded key is discarded.
   */
  async apply (decide: KeyDecision, opts: ApplyOptions = {}): Promise<ApplyResult> {
    let candidate: GeneratedKey | undefined
    for (let attempt = 1; ; attempt++) {
      opts.signal?.throwIfAborted()
      if (candidate === undefined && decide(await this.list(), this.#now()).some((c) => c.op === 'create')) {
        candidate = await generateSigningKey(opts.keySize ?? this.#keySize)
        opts.signal?.throwIfAborted()
      }
      const held = candidate
      const res = await this.#db.transaction(async (tx) => {
        await tx.lock(KEYS_LOCK)
        return await this.#applyInTx(tx, decide, held, opts)
      })
      if (res !== RETRY) {
        // Logged only now that the transaction committed: a failed COMMIT must leave no line claiming a change.
        for (const a of res.changes) this.#log?.info({ event: 'key_' + a.op, kid: a.kid, state: a.state, at: new Date(a.at).toISOString() }, `signing key ${a.kid}: ${CHANGE_TEXT[a.op]}`)
        return res
      }
      if (attempt >= MAX_ATTEMPTS) throw new KeyInvariantError('the key set kept changing while a new key was generated')
    }
  }

  async #applyInTx (tx: Tx, decide: KeyDecision, candidate: GeneratedKey | undefined, opts: ApplyOptions): Promise<ApplyResult | typeof RETRY> {
    const rows = await readKeyRows(tx)
    const keys = rows.map(recordFromRow)
    // A wrong or missing secret must stop the tick before it writes anything. GCM authentication is
    // the check; parsing the key as well would triple an idle tick's cost for nothing.
    for (const r of rows) if (r.private_sealed !== null) this.#openPrivateDer(r.kid, r.private_sealed)
    const now = this.#now()
    const decided = decide(keys, now)
    const creates = decided.filter((c) => c.op === 'create').length
    if (creates > 1) throw new KeyInvariantError('a decision created more than one key')
    if (creates === 1 && candidate === undefined) return RETRY
    const applied: AppliedChange[] = []
    for (const c of decided) applied.push(await this.#applyChange(tx, c, candidate, now))
    for (const r of rows) {
      const sealedWith = r.private_sealed !== null ? this.#secrets.sealedWith(r.private_sealed) : undefined
      if (sealedWith === undefined || sealedWith === this.#secrets.ids[0] || applied.some((a) => a.kid === r.kid && a.op !== 'activate')) continue
      const resealed = this.#secrets.seal(this.#openPrivateDer(r.kid, r.private_sealed!), r.kid)
      await tx.run(`UPDATE ${KEYS_TABLE} SET private_sealed = ? WHERE kid = ? AND private_sealed IS NOT NULL`, [resealed, r.kid])
      applied.push({ op: 'reseal', kid: r.kid, at: now })
    }
    const after = applied.length > 0 ? (await readKeyRows(tx)).map(recordFromRow) : keys
    if (applied.length > 0) {
      const active = after.filter((k) => k.state === 'active').length
      if (active !== 1) throw new KeyInvariantError(`the change would leave ${active} active keys`)
      for (const a of applied) {
        await tx.run(`INSERT INTO ${KEY_EVENTS_TABLE} (at, kid, event, detail) VALUES (?, ?, ?, ?)`, [a.at, a.kid, a.op, a.state ?? null])
      }
    }
    if (opts.beforeCommit !== undefined) await opts.beforeCommit()
    return { changes: applied, discardedKey: candidate !== undefined && creates === 0, now, keys: after }
  }

  async #applyChange (tx: Tx, c: KeyChange, candidate: GeneratedKey | undefined, now: number): Promise<AppliedChange> {
    const expect = async (n: number, kid: string, what: string): Promise<void> => {
      if (n !== 1) {
        const [row] = await readKeyRows(tx, 'WHERE kid = ?', [kid])
        if (row === undefined) throw new KeyNotFoundError(kid)
        throw new KeyStateError(kid, `cannot ${what} a key in state ${row.state}`)
      }
    }
    switch (c.op) {
      case 'create': {
        const k = candidate!
        const sealed = this.#secrets.seal(k.privateDer, k.kid)
        await tx.run(
          `INSERT INTO ${KEYS_TABLE} (kid, state, alg, key_size, public_jwk, private_sealed, created_at, activates_at, activated_at)
           VALUES (?, ?, 'RS256', ?, ?, ?, ?, ?, ?)`,
          [k.kid, c.state, k.keySize, JSON.stringify(k.publicKey), sealed, now, c.state === 'pending' ? c.activatesAt : null, c.state === 'active' ? now : null]
        )
        return { op: 'create', kid: k.kid, state: c.state, at: now }
      }
      case 'activate':
        await expect(await tx.run(`UPDATE ${KEYS_TABLE} SET state = 'active', activated_at = ? WHERE kid = ? AND state = 'pending'`, [now, c.kid]), c.kid, 'activate')
        return { op: 'activate', kid: c.kid, state: 'active', at: now }
      case 'retire':
        await expect(await tx.run(`UPDATE ${KEYS_TABLE} SET state = 'retired', retired_at = ?, private_sealed = NULL WHERE kid = ? AND state = 'active'`, [now, c.kid]), c.kid, 'retire')
        return { op: 'retire', kid: c.kid, state: 'retired', at: now }
      case 'revoke':
        await expect(await tx.run(`UPDATE ${KEYS_TABLE} SET state = 'revoked', revoked_at = ?, private_sealed = NULL WHERE kid = ? AND state <> 'revoked'`, [now, c.kid]), c.kid, 'revoke')
        return { op: 'revoke', kid: c.kid, state: 'revoked', at: now }
      case 'prune':
        await expect(await tx.run(`DELETE FROM ${KEYS_TABLE} WHERE kid = ? AND state IN ('retired', 'revoked')`, [c.kid]), c.kid, 'prune')
        return { op: 'prune', kid: c.kid, at: now }
    }
  }

  #openPrivateDer (kid: string, sealed: string): Buffer {
    try {
      return this.#secrets.open(sealed, kid)
    } catch (err) {
      if (err instanceof UnsealError && err.reason === 'unknown-secret') throw new KeySecretError(kid, err.message)
      throw new KeyCorruptError(kid, err instanceof Error ? err.message : String(err))
    }
  }

  #openPrivate (kid: string, sealed: string): KeyObject {
    const der = this.#openPrivateDer(kid, sealed)
    try {
      return createPrivateKey({ key: der, format: 'der', type: 'pkcs8' })
    } catch {
      throw new KeyCorruptError(kid, 'decrypted private key is not a valid PKCS#8 key')
    }
  }
}

/** Runs the key tables' migrations and returns the store. */
export async function openKeyStore (db: Db, opts: KeyStoreOptions): Promise<KeyStore> {
  // A destroyed private part (already sealed) should not linger in freed SQLite pages either.
  if (db.dialect === 'sqlite') await db.query('PRAGMA secure_delete = ON')
  await migrate(db, [keysComponent])
  return new KeyStore(db, opts)
}
