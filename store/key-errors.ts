import createError from '@fastify/error'

/** `keys revoke <kid>` and friends named a kid the store does not hold. */
export const KeyNotFoundError = createError<[string]>('PORTCULLIS_KEY_NOT_FOUND', 'no signing key with kid "%s"', 404)

/** The operation does not apply to the key's current state (e.g. revoking a revoked key). */
export const KeyStateError = createError<[string, string]>('PORTCULLIS_KEY_STATE', 'key %s: %s', 409)

/** A stored key row is malformed; nothing was changed. */
export const KeyCorruptError = createError<[string, string]>('PORTCULLIS_KEY_CORRUPT', 'corrupt key row %s: %s', 500)

/** A private key cannot be decrypted with the configured secrets; nothing was changed. */
export const KeySecretError = createError<[string, string]>(
  'PORTCULLIS_KEY_SECRET',
  'cannot decrypt private key %s: %s; set PORTCULLIS_KEY_SECRETS to the secret list it was stored with',
  500
)

/** A change would break a lifecycle invariant (exactly one active key); it was rolled back. */
export const KeyInvariantError = createError<[string]>('PORTCULLIS_KEY_INVARIANT', 'key store invariant broken: %s', 500)
