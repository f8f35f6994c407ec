import pino from 'pino'
import { envEnum } from '../lib/env.js'
import { recordRevocation } from './revoke.js'
import type { Db } from '../store/index.js'
import { UsageError } from '../lib/errors.js'
import { logDestination, loggerOptions } from '../lib/logger.js'
import { activationTime, pruneTime } from '../store/key-lifecycle.js'
import { keyTimingsFromEnv } from '../store/key-timings.js'
import { DEFAULT_KEY_SIZE, KEY_SIZES, openKeyStore, type KeyRecord, type KeySize, type KeyStore } from '../store/keys.js'
import { loadKeySecrets } from '../store/secrets.js'
import { table } from './output.js'
import { openCommandStore } from '../store/command-store.js'

export const help = `Usage: portcullis keys <command>

Commands:
  list [--json]              every key: kid, state, created, activated/activates, retired, prunes at;
                             fails if the configured secrets cannot open a stored private key
  rotate [--activate-now]    start a new pending key now (it signs after KEY_PREPUBLISH); with
                             --activate-now switch signing at once (to the pending key if there is one)
  revoke <kid>               emergency: unpublish a key at once and destroy its private part; revoking
                             the active key activates a replacement in the same transaction; verifiers
                             that follow the revocation feed refuse its tokens within about a second
  jwks                       print the public JWKS (pending + active + retired keys)

Reads the same environment as "portcullis rotation" (store, PORTCULLIS_KEY_SECRETS, KEY_SIZE and
the lifecycle timings); see "portcullis rotation --help". LOG_LEVEL (warn): log lines go to stderr.
The store is named on stderr first (one line). Run on the data folder of a running "portcullis
start", the command uses the stack's store, or refuses naming both when its settings name another.`

const iso = (ms: number | null): string => (ms === null ? '' : new Date(ms).toISOString())

function rows (keys: readonly KeyRecord[], timings: ReturnType<typeof keyTimingsFromEnv>): Array<Record<string, string>> {
  return keys.map((k) => ({
    kid: k.kid,
    state: k.state,
    created: iso(k.createdAt),
    'activated/activates': k.state === 'pending' ? `(${iso(activationTime(k, timings))})` : iso(k.activatedAt),
    retired: iso(k.state === 'revoked' ? k.revokedAt : k.retiredAt), // a retired key revoked later shows when it was revoked
    'prunes at': iso(pruneTime(k, timings))
  }))
}

async function withStore<T> (fn: (store: KeyStore, timings: ReturnType<typeof keyTimingsFromEnv>, db: Db) => Promise<T>, existing = true): Promise<T> {
  const env = process.env
  const timings = keyTimingsFromEnv(env)
  const keySize = Number(envEnum(env, 'KEY_SIZE', KEY_SIZES.map(String), String(DEFAULT_KEY_SIZE))) as KeySize
  // Human output goes to stdout; log lines (state changes, warnings) to stderr.
  const level = envEnum(env, 'LOG_LEVEL', ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], 'warn')
  const log = pino(loggerOptions('keys', level), logDestination(2))
  // A missing SQLite store stops an `existing` command here, before a local secret could be generated.
  const { db, dbOpts } = await openCommandStore(env, { existing })
  try {
    const secrets = await loadKeySecrets(env, dbOpts.dataDir, log, { create: !existing })
    return await fn(await openKeyStore(db, { secrets, timings, keySize, log }), timings, db)
  } finally {
    await db.close()
  }
}

const OPTION_SHAPE = /^(?:--[a-z][a-z0-9-]{0,30}|-[A-Za-z])$/

function expectArgs (cmd: string, args: string[], allowed: string[], positional = 0): { flags: Set<string>, pos: string[] } {
  const flags = new Set<string>()
  const pos: string[] = []
  // A kid is a base64url thumbprint and may begin with "-" or "--" ("-5Sr0e5B..."): an option is
  // shaped like a name ("--json", "-x"), anything else is an argument; after "--" everything is.
  let onlyPositional = false
  for (const a of args) {
    if (!onlyPositional && a === '--') {
      onlyPositional = true
    } else if (!onlyPositional && OPTION_SHAPE.test(a)) {
      if (!allowed.includes(a)) throw new UsageError(`keys ${cmd}: unknown option "${a}"`)
      flags.add(a)
    } else {
      pos.push(a)
    }
  }
  if (pos.length !== positional) {
    throw new UsageError(positional === 0 ? `keys ${cmd}: unexpected argument "${pos[0]}"` : `keys ${cmd}: expected ${positional} argument(s), got ${pos.length}`)
  }
  return { flags, pos }
}

export async function run (argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv
  switch (cmd) {
    case 'list': {
      const { flags } = expectArgs(cmd, rest, ['--json'])
      return await withStore(async (store, timings) => {
        const keys = await store.list()
        await store.verifySecrets() // a key the configured secrets cannot open stops the listing
        if (flags.has('--json')) console.log(JSON.stringify(keys.map(({ publicKey: _p, ...k }) => k), null, 2))
        else if (keys.length === 0) console.log('no keys yet (the rotation worker creates the first one, or run "portcullis keys rotate")')
        else console.log(table(rows(keys, timings), ['kid', 'state', 'created', 'activated/activates', 'retired', 'prunes at']))
        return 0
      })
    }
    case 'rotate': {
      const { flags } = expectArgs(cmd, rest, ['--activate-now'])
      return await withStore(async (store) => {
        const r = await store.rotateNow({ activateNow: flags.has('--activate-now') })
        if (r.state === 'active') console.log(`key ${r.kid} is active and signs from now on`)
        else if (r.created) console.log(`created pending key ${r.kid}; it is published now and starts signing at ${iso(r.activatesAt)} (the rotation worker activates it)`)
        else console.log(`pending key ${r.kid} already exists and starts signing at ${iso(r.activatesAt)}; use --activate-now to switch now`)
        return 0
      }, false) // the first key may create the store
    }
    case 'revoke': {
      const { pos } = expectArgs(cmd, rest, [], 1)
      return await withStore(async (store, _timings, db) => {
        const r = await store.revoke(pos[0]!)
        // pushed to every verifier on the issuer's revocation feed: its tokens are refused within about a second
        await recordRevocation(db, 'kid', r.kid, 'key_revoked')
        console.log(`revoked key ${r.kid}: it left the JWKS and its private part is destroyed; verifiers following the revocation feed refuse its tokens now`)
        if (r.replacement !== undefined) console.log(`key ${r.replacement} is now the active key`)
        return 0
      })
    }
    case 'jwks': {
      expectArgs(cmd, rest, [])
      return await withStore(async (store) => {
        console.log(JSON.stringify(await store.publicJwks(), null, 2))
        return 0
      })
    }
    case undefined:
      throw new UsageError('keys: missing command (list, rotate, revoke or jwks); see portcullis keys --help')
    default:
      throw new UsageError(`keys: unknown command "${cmd}" (list, rotate, revoke or jwks)`)
  }
}
