import { openRefreshStore } from '../store/refresh.js'
import { runRevokeCommand } from './revoke.js'

export const help = `Usage: portcullis sessions revoke <sid>

  revoke <sid>     end a session: its refresh tokens stop working, and its access tokens (their
                   "sid" claim) are refused by every verifier that follows the issuer's revocation
                   feed, within about a second. The sid is in the access tokens and in the auth
                   service's login log lines ("family").

Environment: DATABASE_URL, DATABASE_SCHEMA, PORTCULLIS_DATA_DIR (the store); ACCESS_TOKEN_TTL and
CLOCK_SKEW (how long the revocation is kept).`

export async function run (argv: string[]): Promise<number> {
  return await runRevokeCommand({
    command: 'sessions',
    what: 'session id (a UUID)',
    pattern: /^[0-9a-f-]{1,64}$/,
    kind: 'sid',
    reason: 'session_revoked',
    before: async (db, sid) => (await (await openRefreshStore(db)).revokeFamilyId(sid, 'session_revoked')) ? '' : ' (its refresh tokens had already ended)',
    done: (sid, note) => `revoked session ${sid}${note}: its access tokens are refused within about a second`
  }, argv)
}
