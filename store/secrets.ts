import { randomBytes } from 'node:crypto'
import { linkSync, readFileSync, statSync, unlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import type { Logger } from 'pino'
import { envList, type Env, type EnvGroup } from '../lib/env.js'
import { ConfigError } from '../lib/errors.js'
import { makeDataDir } from './config.js'
import { keySecretsFromList, MIN_SECRET_LENGTH, type KeySecrets } from './crypto.js'

export type { KeySecrets } from './crypto.js'

/** Env var holding the key-encryption secrets, comma-separated; the first encrypts, all decrypt. */
export const KEY_SECRETS_ENV = 'PORTCULLIS_KEY_SECRETS'
/** File (under the data folder) holding the generated local secret when the env var is unset. */
export const LOCAL_SECRET_FILE = 'key-secret'

/** The key-encryption secrets, read by every process that opens the signing keys (loadKeySecrets). */
export const SECRETS_ENV: EnvGroup = {
  title: 'key-encryption secrets',
  rows: [
    [KEY_SECRETS_ENV, 'unset', `key-encryption secrets, comma list, each at least ${MIN_SECRET_LENGTH} characters (openssl rand -base64 32): the first encrypts, all decrypt; unset (local use only): a secret is generated once into <PORTCULLIS_DATA_DIR>/${LOCAL_SECRET_FILE} (mode 0600), with a warning`]
  ]
}

function checkSecrets (list: readonly string[], where: string): void {
  list.forEach((s, i) => {
    if (s.length < MIN_SECRET_LENGTH) {
      throw new ConfigError(where, `secret #${i + 1} is ${s.length} characters long; each must have at least ${MIN_SECRET_LENGTH} (e.g. from "openssl rand -base64 32")`)
    }
    if (/\s/.test(s)) throw new ConfigError(where, `secret #${i + 1} contains whitespace`)
  })
}

/** Reads the local secret file, or (`create`) creates it (mode 0600) exactly once even when processes race. */
function localSecret (dataDir: string, log: Logger, create: boolean): string {
  const path = join(dataDir, LOCAL_SECRET_FILE)
  const read = (): string => readFileSync(path, 'utf8').trim()
  try {
    const mode = statSync(path).mode
    if ((mode & 0o077) !== 0) log.warn({ path, mode: (mode & 0o777).toString(8) }, 'local key-encryption secret file is readable by other users; chmod 600 it')
    return read()
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
  }
  if (!create) throw new ConfigError(KEY_SECRETS_ENV, `is not set and there is no local secret at ${path}: set it to the secrets the keys are sealed with`)
  makeDataDir(dataDir)
  // Write a private temp file, then link it into place: link() fails if another process won the race,
  // and nobody ever reads a half-written secret.
  const tmp = `${path}.${process.pid}.${randomBytes(4).toString('hex')}`
  writeFileSync(tmp, randomBytes(32).toString('base64url') + '\n', { mode: 0o600 })
  try {
    linkSync(tmp, path)
    log.warn({ path }, `${KEY_SECRETS_ENV} is not set: generated a local key-encryption secret (mode 0600). Set ${KEY_SECRETS_ENV} in production and whenever several machines share the store`)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
  } finally {
    unlinkSync(tmp)
  }
  return read()
}

/**
 * `--check`: what is wrong with PORTCULLIS_KEY_SECRETS, or undefined. Unset is no problem (a local
 * start generates a secret into the data folder; nothing is written here).
 */
export function keySecretsProblem (env: Env): string | undefined {
  const list = envList(env, KEY_SECRETS_ENV)
  if (list.length === 0) return undefined
  try {
    checkSecrets(list, KEY_SECRETS_ENV)
    return undefined
  } catch (err) {
    return (err as Error).message
  }
}

/**
 * The key-encryption secrets: `PORTCULLIS_KEY_SECRETS` (comma list: first encrypts, all decrypt), or
 * with it unset (local use) a secret generated once into `<dataDir>/key-secret` with a warning.
 * `create: false` (commands that only read keys) never generates the local secret.
 * @throws ConfigError naming PORTCULLIS_KEY_SECRETS (or the file) when a secret is too short.
 */
export async function loadKeySecrets (env: Env, dataDir: string, log: Logger, opts: { create?: boolean } = {}): Promise<KeySecrets> {
  const list = envList(env, KEY_SECRETS_ENV)
  if (list.length > 0) {
    checkSecrets(list, KEY_SECRETS_ENV)
    return keySecretsFromList(list, 'env')
  }
  const s = localSecret(dataDir, log, opts.create ?? true)
  checkSecrets([s], join(dataDir, LOCAL_SECRET_FILE))
  return keySecretsFromList([s], 'file')
}
