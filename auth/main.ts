import { drain } from '../lib/drain.js'
import { listenOn } from '../lib/listen.js'
import { stopSignal } from '../lib/signals.js'
import pino from 'pino'
import { envHelp, type Env } from '../lib/env.js'
import { processEnvProblems, reportCheck } from '../lib/check.js'
import { UsageError } from '../lib/errors.js'
import { logDestination, loggerOptions } from '../lib/logger.js'
import { openClientStore } from '../store/clients.js'
import type { Db, DbOptions } from '../store/db.js'
import { openDb } from '../store/index.js'
import { PostgresDb } from '../store/postgres.js'
import { commandStoreOptions, printStoreLine } from '../store/command-store.js'
import { openKeyStore } from '../store/keys.js'
import { PasswordHasher } from '../store/password.js'
import { openRefreshStore } from '../store/refresh.js'
import { keySecretsProblem, loadKeySecrets } from '../store/secrets.js'
import { openUserStore } from '../store/users.js'
import { AUTH_PROCESS_ENV, authSettingsFromEnv } from './config.js'
import { buildAuthService, type AuthService } from './server.js'

export const help = `Usage: portcullis auth [--check]

Runs the auth service: POST /auth/login, /auth/refresh, /auth/logout, /oauth/token
(client_credentials, refresh_token), GET /.well-known/jwks.json and /.well-known/openid-configuration
on AUTH_HOST:AUTH_PORT; /health/live, /health/ready and /metrics on AUTH_ADMIN_HOST:AUTH_ADMIN_PORT.
Tokens are signed with the store's active key (see "portcullis keys" and "portcullis rotation");
manage accounts with "portcullis users" and "portcullis clients". On SIGTERM /health/ready answers
503 at once and the public listener keeps serving for AUTH_DRAIN_DELAY, then stops accepting and
finishes its in-flight requests; SIGINT skips the delay, a second signal exits at once.

  --check   validate the settings as a start would (each variable, the key timings rules, the
            key-encryption secrets), without opening the store or listening: prints ok (exit 0)
            or every problem (exit 1)

${envHelp(AUTH_PROCESS_ENV)}`

/**
 * The store, as openDb opens it, but PostgreSQL with AUTH_DATABASE_TIMEOUT as its per-statement
 * budget, so that an unavailable database is a 503 within it (openDb sets no budget).
 */
function openStore (opts: DbOptions, databaseTimeout: number): Db {
  if (opts.databaseUrl === undefined || opts.databaseUrl === '') return openDb(opts)
  return new PostgresDb(opts.databaseUrl, {
    timeout: databaseTimeout,
    ...(opts.pgSchema !== undefined ? { schema: opts.pgSchema } : {}),
    ...(opts.pgPoolSize !== undefined ? { poolSize: opts.pgPoolSize } : {})
  })
}

/** `portcullis auth --check`: every problem of the settings, one per variable; nothing is opened. */
export function check (env: Env = process.env, out?: (line: string) => void, err?: (line: string) => void): number {
  const problems = processEnvProblems(env, AUTH_PROCESS_ENV, authSettingsFromEnv)
  const secrets = keySecretsProblem(env)
  if (secrets !== undefined) problems.push(secrets)
  return reportCheck('portcullis auth --check', problems, out, err)
}

export async function run (argv: string[]): Promise<number> {
  if (argv.length === 1 && argv[0] === '--check') return check()
  if (argv.length > 0) throw new UsageError(`auth: unknown argument "${argv[0]}" (see portcullis auth --help)`)
  const env = process.env
  const { logLevel, timings, config, db: dbOpts } = authSettingsFromEnv(env)
  const log = pino(loggerOptions('auth', logLevel), logDestination())
  const secrets = await loadKeySecrets(env, dbOpts.dataDir, log)
  // the store of a stack running on the same data folder, or a refusal naming both (store/command-store.ts)
  const { opts: storeOpts, adoptedFrom } = commandStoreOptions(env)
  const db = openStore(storeOpts, config.databaseTimeout)
  let service: AuthService | undefined
  try {
    await db.ready()
    printStoreLine(db, adoptedFrom)
    const keys = await openKeyStore(db, { secrets, timings, log })
    const users = await openUserStore(db, { hasher: new PasswordHasher({ params: config.scrypt }) })
    const clients = await openClientStore(db)
    const refresh = await openRefreshStore(db, { idleTtl: config.refreshIdleTtl, absoluteTtl: config.refreshAbsoluteTtl })
    service = await buildAuthService({ config, db, keys, users, clients, refresh, loggerInstance: log })

    const stopped = stopSignal()
    await listenOn(service.app, config.host, config.port, 'AUTH_PORT')
    await listenOn(service.admin, config.adminHost, config.adminPort, 'AUTH_ADMIN_PORT')
    log.info({ event: 'start', store: db.description, issuer: config.issuer, kid: service.signer.kid, secrets: secrets.source }, 'auth service ready')
    if (service.signer.kid === null) log.warn('no active signing key yet: token requests answer 503 until one is activated (portcullis rotation / keys rotate)')
    const sig = await stopped
    await drain(service.drain, sig, config.drainDelay, log)
    log.info({ event: 'shutdown', signal: sig }, 'stopping: finishing in-flight requests')
    return 0
  } finally {
    await service?.close()
    await db.close()
  }
}
