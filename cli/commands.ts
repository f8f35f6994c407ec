/**
 * The `portcullis` subcommands. Each module exports `run(argv: string[]): Promise<number>` (the exit
 * code) and `help: string`; they are imported only when chosen, so one process never loads another's code.
 */
export interface CommandModule {
  run(argv: string[]): Promise<number>
  help: string
}

export interface CommandEntry {
  name: string
  summary: string
  /** Module path relative to this folder. */
  module: string
}

export const COMMANDS: CommandEntry[] = [
  { name: 'start', summary: 'start the whole stack (auth, rotation, services, gateway) as child processes', module: './stack.js' },
  { name: 'gateway', summary: 'run the API gateway', module: '../gateway/main.js' },
  { name: 'auth', summary: 'run the auth service (token issuance, JWKS)', module: '../auth/main.js' },
  { name: 'rotation', summary: 'run the key-rotation worker (--once for cron)', module: '../rotation/main.js' },
  { name: 'services', summary: 'run an example service (user, order or product)', module: '../services/main.js' },
  { name: 'keys', summary: 'list, rotate, revoke signing keys; print the JWKS', module: './keys.js' },
  { name: 'users', summary: 'add, list, remove and revoke users', module: './users.js' },
  { name: 'sessions', summary: 'revoke a session: its refresh tokens and its access tokens', module: './sessions.js' },
  { name: 'tokens', summary: 'revoke one access token by its jti', module: './tokens.js' },
  { name: 'clients', summary: 'add, list and remove service clients', module: './clients.js' }
]
