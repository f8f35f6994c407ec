import { UsageError } from '../lib/errors.js'
import type { Db } from '../store/index.js'
import { keyTimingsFromEnv } from '../store/key-timings.js'
import { openRevocationStore, revocationUntil, type RevocationKind } from '../store/revocations.js'
import { openCommandStore } from '../store/command-store.js'
import { parseCommandArgs } from './users.js'

/**
 * Records one revocation from the command line (the auth service publishes it to the verifiers),
 * kept as long as a token it can match may live: ACCESS_TOKEN_TTL + CLOCK_SKEW from the environment.
 */
export async function recordRevocation (db: Db, kind: RevocationKind, value: string, reason: string, env: Record<string, string | undefined> = process.env): Promise<void> {
  const t = keyTimingsFromEnv(env)
  await (await openRevocationStore(db)).add([{ kind, value, reason, expiresAt: revocationUntil(Date.now(), t.accessTokenTtl, t.clockSkew) }])
}

export interface RevokeCommand {
  /** `sessions` or `tokens`. */
  command: string
  /** What the argument is, for the usage errors (`session id (a UUID)`). */
  what: string
  pattern: RegExp
  kind: 'sid' | 'jti'
  reason: string
  /** Work before the revocation is recorded (a session's refresh tokens); returns a note for the output line. */
  before?: (db: Db, value: string) => Promise<string>
  /** The output line. */
  done: (value: string, note: string) => string
}

/** `portcullis <command> revoke <value>`: the one subcommand of `sessions` and `tokens`. */
export async function runRevokeCommand (c: RevokeCommand, argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv
  if (cmd === undefined) throw new UsageError(`${c.command}: missing command (revoke); see portcullis ${c.command} --help`)
  if (cmd !== 'revoke') throw new UsageError(`${c.command}: unknown command "${cmd}" (revoke)`)
  const { pos } = parseCommandArgs(`${c.command} revoke`, rest, {}, 1)
  const value = pos[0]!
  if (!c.pattern.test(value)) throw new UsageError(`${c.command} revoke: "${value}" is not a ${c.what}`)
  const { db } = await openCommandStore(process.env, { existing: true })
  try {
    const note = await c.before?.(db, value) ?? ''
    await recordRevocation(db, c.kind, value, c.reason)
    console.log(c.done(value, note))
    return 0
  } finally {
    await db.close()
  }
}
