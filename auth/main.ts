import { listenOn } from '../lib/listen.js'
import { stopSignal } from '../lib/signals.js'
import pino from 'pino'
import { envHelp } from '../lib/env.js'
import { UsageError } from '../lib/errors.js'
import { loggerOptions } from '../lib/logger.js'
import { openClientStore } from '../store/clients.js'
import { openDb } from '../store/index.js'
import { openKeyStore } from '../store/keys.js'
import { PasswordHasher } from '../store/password.js'
import { openRefreshStore } from '../store/refresh.js'
import { loadKeySecrets } from '../store/secrets.js'
import { openUserStore } from '../store/users.js'
import { AUTH_PROCESS_ENV, authSettingsFromEnv } from './config.js'
import { buildAuthService, type AuthService } from './server.js'

export const help = `Usage: portcullis auth

Runs the auth service: POST /auth/login, /auth/refresh, /auth/logout, /oauth/token
(client_credentials, refresh_token), GET /.well-known/jwks.json and /.well-known/openid-configuration
on AUTH_HOST:AUTH_PORT; /health/live, /health/ready and /metrics on AUTH_HOST:AUTH_ADMIN_PORT.
Tokens are signed with the store's active key (see "portcullis keys" and "portcullis rotation");
manage accounts with "portcullis users" and "portcullis clients".

${envHelp(AUTH_PROCESS_ENV)}`

export async function run (argv: string[]): Promise<number> {
  if (argv.length > 0) throw new UsageError(`auth: unknown argument "${argv[0]}" (see portcullis auth --help)`)
  const env = process.env
  const { logLevel, timings, config, db: dbOpts } = authSettingsFromEnv(env)
  const log = pino(loggerOptions('auth', logLevel))
  const secrets = await loadKeySecrets(env, dbOpts.dataDir, log)
  const db = openDb(dbOpts)
  let service: AuthService | undefined
  try {
    const keys = await openKeyStore(db, { secrets, timings, log })
    const users = await openUserStore(db, { hasher: new PasswordHasher({ params: config.scrypt }) })
    const clients = await openClientStore(db)
    const refresh = await openRefreshStore(db, { idleTtl: config.refreshIdleTtl, absoluteTtl: config.refreshAbsoluteTtl })
    service = await buildAuthService({ config, db, keys, users, clients, refresh, loggerInstance: log })

    const stopped = stopSignal()
    await listenOn(service.app, config.host, config.port, 'AUTH_PORT')
    await listenOn(service.admin, config.host, config.adminPort, 'AUTH_ADMIN_PORT')
    log.info({ event: 'start', store: db.description, issuer: config.issuer, kid: service.signer.kid, secrets: secrets.source }, 'auth service ready')
    if (service.signer.kid === null) log.warn('no active signing key yet: token requests answer 503 until one is activated (portcullis rotation / keys rotate)')
    const sig = await stopped
    log.info({ event: 'shutdown', signal: sig }, 'stopping: finishing in-flight requests')
    return 0
  } finally {
    await service?.close()
    await db.close()
  }
}
