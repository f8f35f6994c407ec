import { randomBytes } from 'node:crypto'
import { parseArgs, type ParseArgsConfig } from 'node:util'
import { UsageError } from '../lib/errors.js'
import type { Db } from '../store/index.js'
import { PasswordHasher, scryptParamsFromEnv } from '../store/password.js'
import { openRefreshStore } from '../store/refresh.js'
import { recordRevocation } from './revoke.js'
import { openUserStore, type UserStore } from '../store/users.js'
import { table } from './output.js'
import { openCommandStore } from '../store/command-store.js'

export const help = `Usage: portcullis users <command>

Commands:
  add <username> [--role R] [--permissions a:b,c:d] [--password-stdin]
                   add a user; the password is read from stdin with --password-stdin, otherwise a
                   random one is generated and printed once. Usernames are case-insensitive.
  list [--json]    every user: username, id (the tokens' sub), role, permissions, created
  remove <username>
                   delete a user, revoke its refresh tokens, and its access tokens at every verifier
                   that follows the issuer's revocation feed (within about a second)
  revoke <username>
                   keep the user, but end every session and refuse every token issued to it until
                   now (refresh and access tokens); it can log in again

Roles: lower-case identifiers (default "user"). Permissions: resource:action, e.g. order:read (the
example services check order:read, order:create and product:write).
Environment: DATABASE_URL, DATABASE_SCHEMA, PORTCULLIS_DATA_DIR (the store), PASSWORD_SCRYPT_N/R/P
(scrypt parameters for new hashes; see portcullis auth --help).
The store is named on stderr first (one line). Run on the data folder of a running "portcullis
start", the command uses the stack's store, or refuses naming both when its settings name another.`

/** node:util parseArgs with usage errors as one line. */
export function parseCommandArgs (prefix: string, args: string[], options: ParseArgsConfig['options'], positionals: number | [min: number, max: number]): { values: Record<string, string | boolean | undefined>, pos: string[] } {
  let parsed
  try {
    parsed = parseArgs({ args, options: options ?? {}, allowPositionals: true, strict: true })
  } catch (err) {
    // node's wording ("Unknown option '--x'. To specify a positional argument ...") in the house style
    const e = err as Error & { code?: string }
    const opt = /'([^']+)'/.exec(e.message)?.[1]
    if (e.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' && opt !== undefined) throw new UsageError(`${prefix}: unknown option "${opt}"`)
    throw new UsageError(`${prefix}: ${e.message}`)
  }
  const [min, max] = typeof positionals === 'number' ? [positionals, positionals] : positionals
  const n = parsed.positionals.length
  if (n < min || n > max) {
    throw new UsageError(`${prefix}: expected ${min === max ? min : `${min} to ${max}`} argument(s), got ${n}`)
  }
  return { values: parsed.values as Record<string, string | boolean | undefined>, pos: parsed.positionals }
}

export function splitList (v: string | boolean | undefined, sep: RegExp): string[] {
  return typeof v === 'string' ? v.split(sep).map((s) => s.trim()).filter((s) => s !== '') : []
}

async function readStdin (): Promise<string> {
  const chunks: Buffer[] = []
  for await (const c of process.stdin) chunks.push(c as Buffer)
  return Buffer.concat(chunks).toString('utf8').replace(/\r?\n$/, '')
}

async function withUsers<T> (fn: (users: UserStore, db: Db) => Promise<T>, existing = true): Promise<T> {
  const env = process.env
  const hasher = new PasswordHasher({ params: scryptParamsFromEnv(env) })
  const { db } = await openCommandStore(env, { existing })
  try {
    return await fn(await openUserStore(db, { hasher }), db)
  } finally {
    await db.close()
  }
}

export async function run (argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv
  switch (cmd) {
    case 'add': {
      const { values, pos } = parseCommandArgs('users add', rest, {
        role: { type: 'string' }, permissions: { type: 'string' }, 'password-stdin': { type: 'boolean' }
      }, 1)
      const generated = values['password-stdin'] !== true
      const password = generated ? randomBytes(18).toString('base64url') : await readStdin()
      return await withUsers(async (users) => {
        const u = await users.add({
          username: pos[0]!,
          password,
          ...(typeof values.role === 'string' ? { role: values.role } : {}),
          permissions: splitList(values.permissions, /[,\s]+/)
        })
        console.log(`added user ${u.username} (id ${u.id}, role ${u.role}${u.permissions.length > 0 ? `, permissions ${u.permissions.join(',')}` : ''})`)
        if (generated) console.log(`password (shown once): ${password}`)
        return 0
      }, false) // the first user may create the store
    }
    case 'list': {
      const { values } = parseCommandArgs('users list', rest, { json: { type: 'boolean' } }, 0)
      return await withUsers(async (users) => {
        const list = await users.list()
        if (values.json === true) console.log(JSON.stringify(list, null, 2))
        else if (list.length === 0) console.log('no users yet (portcullis users add <username>)')
        else {
          console.log(table(list.map((u) => ({
            username: u.username, id: u.id, role: u.role, permissions: u.permissions.join(','), created: new Date(u.createdAt).toISOString()
          })), ['username', 'id', 'role', 'permissions', 'created']))
        }
        return 0
      })
    }
    case 'remove': {
      const { pos } = parseCommandArgs('users remove', rest, {}, 1)
      return await withUsers(async (users, db) => {
        const id = await users.remove(pos[0]!)
        if (id === null) throw new UsageError(`users remove: no user "${pos[0]}"`)
        const revoked = await (await openRefreshStore(db)).revokeSubject(id)
        await recordRevocation(db, 'sub', id, 'user_removed')
        console.log(`removed user ${pos[0]!.toLowerCase()}; revoked ${revoked} refresh-token famil${revoked === 1 ? 'y' : 'ies'} and its access tokens`)
        return 0
      })
    }
    case 'revoke': {
      const { pos } = parseCommandArgs('users revoke', rest, {}, 1)
      return await withUsers(async (users, db) => {
        const user = (await users.list()).find((u) => u.username === pos[0]!.toLowerCase())
        if (user === undefined) throw new UsageError(`users revoke: no user "${pos[0]}"`)
        const revoked = await (await openRefreshStore(db)).revokeSubject(user.id, 'user_revoked')
        await recordRevocation(db, 'sub', user.id, 'user_revoked')
        console.log(`revoked every token of ${user.username} issued until now: ${revoked} refresh-token famil${revoked === 1 ? 'y' : 'ies'} and its access tokens`)
        return 0
      })
    }
    case undefined:
      throw new UsageError('users: missing command (add, list, remove or revoke); see portcullis users --help')
    default:
      throw new UsageError(`users: unknown command "${cmd}" (add, list, remove or revoke)`)
  }
}
