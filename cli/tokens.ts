import { runRevokeCommand } from './revoke.js'

export const help = `Usage: portcullis tokens revoke <jti>

  revoke <jti>     refuse one access token (its "jti" claim) at every verifier that follows the
                   issuer's revocation feed, within about a second. Clients can do the same with
                   the token itself: POST /oauth/revoke (RFC 7009).

Environment: DATABASE_URL, DATABASE_SCHEMA, PORTCULLIS_DATA_DIR (the store); ACCESS_TOKEN_TTL and
CLOCK_SKEW (how long the revocation is kept).`

export async function run (argv: string[]): Promise<number> {
  return await runRevokeCommand({
    command: 'tokens',
    what: 'jti (1-256 printable characters)',
    pattern: /^[\x21-\x7e]{1,256}$/,
    kind: 'jti',
    reason: 'token_revoked',
    done: (jti) => `revoked token ${jti}: refused within about a second`
  }, argv)
}
