import { randomBytes, scrypt as scryptCb, timingSafeEqual, type ScryptOptions } from 'node:crypto'
import { envInt, type Env } from '../lib/env.js'
import { ConfigError } from '../lib/errors.js'

/**
 * Password hashing with scrypt (node:crypto). The parameters are stored with each hash
 * (`scrypt$N$r$p$salt$hash`, base64url), so they can be raised later: a hash made with weaker
 * parameters than the current ones still verifies and is reported as `needsRehash`.
 */
export interface ScryptParams {
  /** CPU/memory cost, a power of two. @defaultValue 32768 (2^15, 32 MiB with r = 8) */
  N: number
  /** Block size. @defaultValue 8 */
  r: number
  /** Parallelization (Node runs the p lanes one after another: p multiplies the CPU cost). @defaultValue 3 */
  p: number
}

// OWASP's password storage cheat sheet: N=2^17,r=8,p=1 or equivalently N=2^15,r=8,p=3. The latter keeps
// each hash at 32 MiB, so four concurrent logins (libuv's pool) stay at 128 MiB instead of 512 MiB.
export const DEFAULT_SCRYPT_PARAMS: Readonly<ScryptParams> = { N: 32768, r: 8, p: 3 }
export const KEY_LENGTH = 32
export const SALT_LENGTH = 16
/** Bounds for parameters read from env or from a stored hash: a corrupt row must not cost minutes of CPU. */
const MAX_N = 1 << 20
const MAX_R = 32
const MAX_P = 16
/** scrypt needs 128 * N * r bytes; each bound alone would still allow 4 GiB (N = 2^20, r = 32). */
const MAX_MEMORY_MIB = 1024
const memoryMib = (N: number, r: number): number => (128 * N * r) / (1024 * 1024)

export type ScryptFn = (password: Buffer, salt: Buffer, keyLength: number, options: ScryptOptions) => Promise<Buffer>

const nodeScrypt: ScryptFn = (password, salt, keyLength, options) => new Promise((resolve, reject) => {
  scryptCb(password, salt, keyLength, options, (err, key) => {
    if (err !== null) reject(err)
    else resolve(key)
  })
})

function isPowerOfTwo (n: number): boolean {
  return Number.isInteger(n) && n > 1 && (n & (n - 1)) === 0
}

function checkParams (p: ScryptParams): string | undefined {
  if (!isPowerOfTwo(p.N) || p.N > MAX_N) return `N must be a power of two between 2 and ${MAX_N}`
  if (!Number.isInteger(p.r) || p.r < 1 || p.r > MAX_R) return `r must be an integer between 1 and ${MAX_R}`
  if (!Number.isInteger(p.p) || p.p < 1 || p.p > MAX_P) return `p must be an integer between 1 and ${MAX_P}`
  if (memoryMib(p.N, p.r) > MAX_MEMORY_MIB) return `128 * N * r is ${memoryMib(p.N, p.r)} MiB, more than ${MAX_MEMORY_MIB} MiB`
  return undefined
}

/** `PASSWORD_SCRYPT_N` (32768), `PASSWORD_SCRYPT_R` (8), `PASSWORD_SCRYPT_P` (3): parameters for new hashes. */
export function scryptParamsFromEnv (env: Env): ScryptParams {
  const N = envInt(env, 'PASSWORD_SCRYPT_N', DEFAULT_SCRYPT_PARAMS.N, { min: 2, max: MAX_N })
  if (!isPowerOfTwo(N)) throw new ConfigError('PASSWORD_SCRYPT_N', `must be a power of two, got ${N}`)
  const r = envInt(env, 'PASSWORD_SCRYPT_R', DEFAULT_SCRYPT_PARAMS.r, { min: 1, max: MAX_R })
  const p = envInt(env, 'PASSWORD_SCRYPT_P', DEFAULT_SCRYPT_PARAMS.p, { min: 1, max: MAX_P })
  if (memoryMib(N, r) > MAX_MEMORY_MIB) {
    throw new ConfigError('PASSWORD_SCRYPT_R', `128 * PASSWORD_SCRYPT_N * PASSWORD_SCRYPT_R bytes is ${memoryMib(N, r)} MiB per hash, more than ${MAX_MEMORY_MIB} MiB; lower one of them`)
  }
  return { N, r, p }
}

interface ParsedHash { params: ScryptParams, salt: Buffer, hash: Buffer }

function parseHash (stored: string): ParsedHash | undefined {
  const parts = stored.split('$')
  if (parts.length !== 6 || parts[0] !== 'scrypt') return undefined
  const params = { N: Number(parts[1]), r: Number(parts[2]), p: Number(parts[3]) }
  if (checkParams(params) !== undefined) return undefined
  const salt = Buffer.from(parts[4]!, 'base64url')
  const hash = Buffer.from(parts[5]!, 'base64url')
  if (salt.length < 8 || hash.length < 16 || hash.length > 64) return undefined
  return { params, salt, hash }
}

export interface VerifyResult {
  ok: boolean
  /** The hash was made with parameters other than the current ones: store a fresh hash. */
  needsRehash: boolean
}

export interface PasswordHasherOptions {
  params?: ScryptParams
  /** Replaceable for tests that count the scrypt work done. @defaultValue node:crypto scrypt */
  scrypt?: ScryptFn
}

export class PasswordHasher {
  readonly params: Readonly<ScryptParams>
  #scrypt: ScryptFn
  #dummy: ParsedHash

  constructor (opts: PasswordHasherOptions = {}) {
    const params = { ...(opts.params ?? DEFAULT_SCRYPT_PARAMS) }
    const bad = checkParams(params)
    if (bad !== undefined) throw new Error(`invalid scrypt parameters: ${bad}`)
    this.params = Object.freeze(params)
    this.#scrypt = opts.scrypt ?? nodeScrypt
    // Random salt and random "hash": no password can match it, and making it needs no scrypt call,
    // so the first unknown-user login costs exactly what every later one does.
    this.#dummy = { params: this.params, salt: randomBytes(SALT_LENGTH), hash: randomBytes(KEY_LENGTH) }
  }

  async #derive (password: string, salt: Buffer, params: ScryptParams, keyLength: number): Promise<Buffer> {
    // maxmem: scrypt needs 128 * N * r bytes; leave headroom so raised parameters never hit the default 32 MiB cap.
    const maxmem = 256 * params.N * params.r + 1024 * 1024
    return await this.#scrypt(Buffer.from(password, 'utf8'), salt, keyLength, { N: params.N, r: params.r, p: params.p, maxmem })
  }

  async hash (password: string): Promise<string> {
    const salt = randomBytes(SALT_LENGTH)
    const key = await this.#derive(password, salt, this.params, KEY_LENGTH)
    const { N, r, p } = this.params
    return `scrypt$${N}$${r}$${p}$${salt.toString('base64url')}$${key.toString('base64url')}`
  }

  async verify (password: string, stored: string): Promise<VerifyResult> {
    const parsed = parseHash(stored)
    if (parsed === undefined) {
      // An unreadable hash still costs the same work as a real one, then fails.
      await this.verifyDummy(password)
      return { ok: false, needsRehash: false }
    }
    const key = await this.#derive(password, parsed.salt, parsed.params, parsed.hash.length)
    const ok = timingSafeEqual(key, parsed.hash)
    const { N, r, p } = this.params
    const needsRehash = parsed.params.N !== N || parsed.params.r !== r || parsed.params.p !== p || parsed.hash.length !== KEY_LENGTH
    return { ok, needsRehash }
  }

  /**
   * The work of verifying a password against a hash made with the current parameters, for a user
   * that does not exist: the caller answers exactly as for a wrong password (no user enumeration).
   */
  async verifyDummy (password: string): Promise<false> {
    const d = this.#dummy
    const key = await this.#derive(password, d.salt, d.params, d.hash.length)
    timingSafeEqual(key, d.hash)
    return false
  }
}
