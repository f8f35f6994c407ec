import { existsSync, statSync } from 'node:fs'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { KEYS_TABLE } from '../store/keys-schema.js'
import type { Db } from '../store/db.js'
import { testBackends } from './helpers/backends.js'
import { runCli, TEST_TIMING_ENV } from './helpers/rotation-workers.js'

const SECRET = 'cli-test-secret-0123456789abcdefghijklmn'

async function dump (db: Db): Promise<unknown[]> {
  return await db.query(`SELECT * FROM ${KEYS_TABLE} ORDER BY kid`)
}

/**
 * A failed command: non-zero exit and exactly one line on stderr matching `re`, after the line naming
 * the store when the command got as far as opening one.
 */
function oneLineError (t: Test, r: { code: number | null, stderr: string }, re: RegExp, what: string): void {
  t.equal(r.code, 1, `${what}: exit code 1`)
  const all = r.stderr.trim().split('\n')
  const lines = /^portcullis: store: /.test(all[0] ?? '') ? all.slice(1) : all
  t.equal(lines.length, 1, `${what}: one line (${r.stderr.trim()})`)
  t.match(lines[0], re, what)
}

const [sqlite] = await testBackends()

t.test('keys and rotation commands: happy path and bad input (one-line errors, non-zero exit, store unchanged)', async (t) => {
  const be = await sqlite!.open()
  t.teardown(be.cleanup)
  const env = { ...be.env, ...TEST_TIMING_ENV, PORTCULLIS_KEY_SECRETS: SECRET, LOG_LEVEL: 'warn' }
  const cli = async (args: string[], extra: Record<string, string> = {}): Promise<{ code: number | null, stdout: string, stderr: string }> => await runCli(args, { ...env, ...extra })

  const first = await cli(['keys', 'rotate', '--activate-now'])
  t.equal(first.code, 0, first.stderr)
  const kid = /key (\S+) is active/.exec(first.stdout)?.[1]
  t.ok(kid !== undefined, 'printed the new active kid')
  const [list, jwks, help, once] = await Promise.all([cli(['keys', 'list']), cli(['keys', 'jwks']), cli(['rotation', '--help']), cli(['rotation', '--once'], { LOG_LEVEL: 'info' })])
  t.equal(once.code, 0, `rotation --once succeeds: ${once.stderr}`)
  t.match(once.stdout, /"event":"done","result":"unchanged"/, 'rotation --once ran one tick: nothing due')
  t.match(list.stdout, new RegExp(`^kid +state +created +activated/activates +retired +prunes at\\n${kid} +active `))
  const set = JSON.parse(jwks.stdout) as { keys: Array<Record<string, string>> }
  t.same(set.keys.map((k) => Object.keys(k).sort()), [['alg', 'e', 'kid', 'kty', 'n', 'use']])
  t.equal(set.keys[0]!.kid, kid)
  t.match(help.stdout, /--once/)

  const before = await dump(be.db)
  const nowhere = join(be.env.PORTCULLIS_DATA_DIR!, 'nowhere')
  const bad = await Promise.all([
    cli(['keys', 'revoke', 'no-such-kid']),
    cli(['keys', 'rotate'], { KEY_ROTATION_PERIOD: 'weekly' }),
    cli(['rotation', '--once'], { KEY_SIZE: '1024' }),
    cli(['rotation'], { ROTATION_METRICS_PORT: 'ninety' }),
    cli(['rotation', '--once'], { KEY_PREPUBLISH: '10s' }),
    cli(['rotation', '--once'], { PORTCULLIS_KEY_SECRETS: 'too-short' }),
    cli(['rotation', '--once'], { ROTATION_SCHEDULE: 'every tuesday' }),
    cli(['rotation', '--once'], { DATABASE_URL: 'mysql://x' }),
    cli(['keys', 'rotate', '--activate-now'], { PORTCULLIS_KEY_SECRETS: 'a-different-secret-0123456789abcdefghijkl' }),
    cli(['keys', 'frobnicate']),
    cli(['keys', 'revoke']),
    cli(['rotation', '--twice']),
    // A kid is base64url and may begin with "-": it is an argument, not an option.
    cli(['keys', 'revoke', '-5Sr0e5Bgr6BidmtmsV58wH8L0FzHPc5XhzmAzi029U']),
    cli(['keys', 'revoke', '--', '--no-such-kid']),
    cli(['keys', 'list', '-j']),
    cli(['keys', 'revoke', '--now', kid!]),
    cli(['keys', 'revoke', '--Sr0e5Bgr6BidmtmsV58wH8L0FzHPc5XhzmAzi029U']),
    // the check before dropping an old secret: list opens every private part with the secrets given
    cli(['keys', 'list'], { PORTCULLIS_KEY_SECRETS: 'a-different-secret-0123456789abcdefghijkl' }),
    // run from the wrong folder: read-only commands say there is no store instead of creating one
    ...[['keys', 'list'], ['keys', 'jwks'], ['users', 'list'], ['clients', 'remove', 'x']].map((args) => cli(args, { PORTCULLIS_DATA_DIR: nowhere, PORTCULLIS_KEY_SECRETS: '' }))
  ])
  oneLineError(t, bad[0]!, /^portcullis: no signing key with kid "no-such-kid"$/, 'unknown kid for revoke')
  oneLineError(t, bad[1]!, /^portcullis: Invalid configuration: KEY_ROTATION_PERIOD: expected a duration/, 'malformed duration')
  oneLineError(t, bad[2]!, /^portcullis: Invalid configuration: KEY_SIZE: expected one of 2048, 3072, 4096, got "1024"$/, 'bad key size')
  oneLineError(t, bad[3]!, /^portcullis: Invalid configuration: ROTATION_METRICS_PORT: expected an integer/, 'bad port')
  oneLineError(t, bad[4]!, /^portcullis: Invalid configuration: KEY_PREPUBLISH: must be >= VERIFIER_CACHE_MAX \+ CLOCK_SKEW \+ SIGNER_PROPAGATION = 36s/, 'unsafe timing')
  oneLineError(t, bad[5]!, /^portcullis: Invalid configuration: PORTCULLIS_KEY_SECRETS: secret #1 is 9 characters long/, 'short secret')
  oneLineError(t, bad[6]!, /^portcullis: Invalid configuration: ROTATION_SCHEDULE: not a valid cron pattern "every tuesday"/, 'bad schedule')
  oneLineError(t, bad[7]!, /^portcullis: Invalid configuration: DATABASE_URL: expected a postgres: or postgresql: URL/, 'bad database URL')
  oneLineError(t, bad[8]!, new RegExp(`^portcullis: cannot decrypt private key ${kid}: sealed with secret id [0-9a-f]{12}, which is not among the configured secrets`), 'wrong secret')
  oneLineError(t, bad[9]!, /^portcullis: keys: unknown command "frobnicate"/, 'unknown subcommand')
  oneLineError(t, bad[10]!, /^portcullis: keys revoke: expected 1 argument/, 'missing kid')
  oneLineError(t, bad[11]!, /^portcullis: rotation: unknown argument "--twice"/, 'unknown flag')
  oneLineError(t, bad[12]!, /^portcullis: no signing key with kid "-5Sr0e5Bgr6BidmtmsV58wH8L0FzHPc5XhzmAzi029U"$/, 'a kid beginning with "-" is looked up')
  oneLineError(t, bad[13]!, /^portcullis: no signing key with kid "--no-such-kid"$/, 'after "--" everything is an argument')
  oneLineError(t, bad[14]!, /^portcullis: keys list: unknown option "-j"$/, 'unknown short option')
  oneLineError(t, bad[15]!, /^portcullis: keys revoke: unknown option "--now"$/, 'unknown long option')
  oneLineError(t, bad[16]!, /^portcullis: no signing key with kid "--Sr0e5Bgr6BidmtmsV58wH8L0FzHPc5XhzmAzi029U"$/, 'a kid beginning with "--" is looked up')
  for (const r of bad.slice(18)) oneLineError(t, r, new RegExp(`^portcullis: Invalid configuration: PORTCULLIS_DATA_DIR: no store at ${nowhere}/portcullis\\.db: run the command from the folder that holds data/`), 'no store there')
  t.notOk(existsSync(nowhere), 'nothing was created where there is no store')
  // a store but no secret: reading keys never generates a local secret
  const noSecret = await cli(['keys', 'list'], { PORTCULLIS_KEY_SECRETS: '' })
  oneLineError(t, noSecret, new RegExp(`^portcullis: Invalid configuration: PORTCULLIS_KEY_SECRETS: is not set and there is no local secret at ${be.env.PORTCULLIS_DATA_DIR!}/key-secret`), 'no secret to read')
  t.notOk(existsSync(join(be.env.PORTCULLIS_DATA_DIR!, 'key-secret')), 'no local secret was generated by a read-only command')
  // the first key in a new folder: folder 0700, database and generated secret 0600
  const fresh = join(be.env.PORTCULLIS_DATA_DIR!, 'fresh')
  t.equal((await cli(['keys', 'rotate', '--activate-now'], { PORTCULLIS_DATA_DIR: fresh, PORTCULLIS_KEY_SECRETS: '' })).code, 0)
  t.equal(statSync(fresh).mode & 0o777, 0o700, 'a new data folder is private')
  for (const f of ['portcullis.db', 'key-secret']) t.equal(statSync(join(fresh, f)).mode & 0o777, 0o600, f)
  oneLineError(t, bad[17]!, new RegExp(`^portcullis: cannot decrypt private key ${kid}: sealed with secret id [0-9a-f]{12}, which is not among the configured secrets`), 'keys list with a secret that cannot open the keys')
  t.same(await dump(be.db), before, 'store unchanged by every bad command')

  // A corrupt row: every command that reads it names it and stops; nothing changes.
  await be.db.run(`UPDATE ${KEYS_TABLE} SET public_jwk = ? WHERE kid = ?`, ['{"kty":"RSA"', kid!])
  const corrupt = await dump(be.db)
  const [c1, c2, c3] = await Promise.all([cli(['rotation', '--once']), cli(['keys', 'list']), cli(['rotation'], { ROTATION_METRICS_PORT: '0' })])
  const re = new RegExp(`^portcullis: (rotation worker cannot start: )?corrupt key row ${kid}: public key is not valid JSON$`)
  oneLineError(t, c1, re, 'corrupt row: rotation --once')
  oneLineError(t, c2, re, 'corrupt row: keys list')
  oneLineError(t, c3, re, 'corrupt row: the daemon refuses to start')
  t.same(await dump(be.db), corrupt, 'store unchanged by the corrupt-row failures')
  await be.db.run(`UPDATE ${KEYS_TABLE} SET public_jwk = ? WHERE kid = ?`, [(before as Array<{ kid: string, public_jwk: string }>)[0]!.public_jwk, kid!])

  // Emergency revoke of the active key: a replacement is active in the same command.
  const rev = await cli(['keys', 'revoke', kid!])
  t.equal(rev.code, 0, rev.stderr)
  t.match(rev.stdout, new RegExp(`revoked key ${kid}: it left the JWKS.*\\nkey \\S+ is now the active key`))
  const after = JSON.parse((await cli(['keys', 'jwks'])).stdout) as { keys: Array<{ kid: string }> }
  t.equal(after.keys.length, 1)
  t.not(after.keys[0]!.kid, kid, 'the revoked key left the JWKS')

  // A retired key revoked later: the list shows when it was revoked, not when it retired.
  const second = after.keys[0]!.kid
  t.equal((await cli(['keys', 'rotate', '--activate-now'])).code, 0)
  t.equal((await cli(['keys', 'revoke', '--', second])).code, 0)
  const [row] = await be.db.query<{ state: string, retired_at: number, revoked_at: number }>(`SELECT state, retired_at, revoked_at FROM ${KEYS_TABLE} WHERE kid = ?`, [second])
  t.equal(row!.state, 'revoked')
  t.ok(Number(row!.retired_at) > 0 && Number(row!.revoked_at) >= Number(row!.retired_at), 'retired, then revoked')
  const listed = (await cli(['keys', 'list'])).stdout.split('\n').find((l) => l.startsWith(second))!
  t.match(listed, new RegExp(` revoked .* ${new Date(Number(row!.revoked_at)).toISOString().replace(/[.]/g, '\\.')}( |$)`), 'the revoke time in the list')
})
