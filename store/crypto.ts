import { createCipheriv, createDecipheriv, createHash, hkdfSync, randomBytes } from 'node:crypto'

/**
 * Encryption at rest for private keys: AES-256-GCM under a key derived (HKDF-SHA256) from a
 * key-encryption secret. Secrets come as a list: the first seals, every one can open, so the secret
 * itself can be rotated (put the new one first, keep the old one until every row was resealed).
 *
 * Sealed text: `v1.<secretId>.<iv>.<tag>.<ciphertext>` (base64url parts). The secret id is a short
 * hash of the secret, so a missing secret is named instead of reported as a generic failure; the
 * row's kid is bound as additional authenticated data, so a sealed key copied onto another row
 * does not open.
 */
export const MIN_SECRET_LENGTH = 32
const VERSION = 'v1'
const IV_BYTES = 12
const TAG_BYTES = 16

/** A secret's public identifier: 12 hex characters of a domain-separated SHA-256. */
export function secretId (secret: string): string {
  return createHash('sha256').update('portcullis/secret-id\0').update(secret).digest('hex').slice(0, 12)
}

function deriveKey (secret: string): Buffer {
  return Buffer.from(hkdfSync('sha256', Buffer.from(secret, 'utf8'), 'portcullis/key-encryption/v1', 'aes-256-gcm', 32))
}

/** Why a sealed value did not open: no configured secret has its id, or it failed authentication. */
export class UnsealError extends Error {
  constructor (readonly reason: 'unknown-secret' | 'corrupt', message: string, readonly sealedWith?: string) {
    super(message)
    this.name = 'UnsealError'
  }
}

export interface KeySecrets {
  /** Ids of the configured secrets, the sealing one first. */
  readonly ids: readonly string[]
  /** Where they came from, for logs. */
  readonly source: 'env' | 'file' | 'memory'
  seal (plaintext: Buffer, aad: string): string
  /** @throws UnsealError */
  open (sealed: string, aad: string): Buffer
  /** The secret id a sealed value names (undefined when it is not in the sealed format). */
  sealedWith (sealed: string): string | undefined
}

/** Builds the secret set; `secrets[0]` seals. Callers validate lengths (see store/secrets.ts). */
export function keySecretsFromList (secrets: readonly string[], source: KeySecrets['source'] = 'memory'): KeySecrets {
  if (secrets.length === 0) throw new Error('at least one key-encryption secret is required')
  const keys = new Map<string, Buffer>()
  const ids: string[] = []
  for (const s of secrets) {
    const id = secretId(s)
    if (!keys.has(id)) {
      keys.set(id, deriveKey(s))
      ids.push(id)
    }
  }
  const sealId = ids[0]!
  const sealKey = keys.get(sealId)!
  const parse = (sealed: string): string[] | undefined => {
    const parts = sealed.split('.')
    return parts.length === 5 && parts[0] === VERSION ? parts : undefined
  }
  return {
    ids,
    source,
    seal (plaintext, aad) {
      const iv = randomBytes(IV_BYTES)
      const c = createCipheriv('aes-256-gcm', sealKey, iv)
      c.setAAD(Buffer.from(aad, 'utf8'))
      const ct = Buffer.concat([c.update(plaintext), c.final()])
      return [VERSION, sealId, iv.toString('base64url'), c.getAuthTag().toString('base64url'), ct.toString('base64url')].join('.')
    },
    open (sealed, aad) {
      const parts = parse(sealed)
      if (parts === undefined) throw new UnsealError('corrupt', 'sealed private key is not in the expected format')
      const [, id, ivText, tagText, ctText] = parts as [string, string, string, string, string]
      const key = keys.get(id)
      if (key === undefined) {
        throw new UnsealError('unknown-secret', `sealed with secret id ${id}, which is not among the configured secrets (${ids.join(', ')})`, id)
      }
      const iv = Buffer.from(ivText, 'base64url')
      const tag = Buffer.from(tagText, 'base64url')
      if (iv.length !== IV_BYTES || tag.length !== TAG_BYTES) throw new UnsealError('corrupt', 'sealed private key is truncated', id)
      try {
        const d = createDecipheriv('aes-256-gcm', key, iv)
        d.setAAD(Buffer.from(aad, 'utf8'))
        d.setAuthTag(tag)
        return Buffer.concat([d.update(Buffer.from(ctText, 'base64url')), d.final()])
      } catch {
        throw new UnsealError('corrupt', 'sealed private key failed authentication (corrupt or altered)', id)
      }
    },
    sealedWith (sealed) {
      return parse(sealed)?.[1]
    }
  }
}
