import { UsageError } from '../lib/errors.js'
import { openClientStore, type ClientStore } from '../store/clients.js'
import { table } from './output.js'
import { openCommandStore } from '../store/command-store.js'
import { parseCommandArgs, splitList } from './users.js'

export const help = `Usage: portcullis clients <command>

Commands:
  add [<client-id>] [--scope "a b"] [--audience AUD]
                   add a service client for the client_credentials grant of POST /oauth/token; its
                   secret is printed once and stored only as a hash. The id is generated when omitted.
                   --audience sets the aud of its tokens (default AUTH_AUDIENCE).
  list [--json]    every client: id, scopes, audience, created
  remove <client-id>
                   delete a client (tokens already issued stay valid until they expire)

Environment: DATABASE_URL, DATABASE_SCHEMA, PORTCULLIS_DATA_DIR (the store).
The store is named on stderr first (one line). Run on the data folder of a running "portcullis
start", the command uses the stack's store, or refuses naming both when its settings name another.`

async function withClients<T> (fn: (clients: ClientStore) => Promise<T>, existing = true): Promise<T> {
  const { db } = await openCommandStore(process.env, { existing })
  try {
    return await fn(await openClientStore(db))
  } finally {
    await db.close()
  }
}

export async function run (argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv
  switch (cmd) {
    case 'add': {
      const { values, pos } = parseCommandArgs('clients add', rest, { scope: { type: 'string' }, audience: { type: 'string' } }, [0, 1])
      return await withClients(async (clients) => {
        const { client, clientSecret } = await clients.add({
          ...(pos[0] !== undefined ? { clientId: pos[0] } : {}),
          scopes: splitList(values.scope, /[\s,]+/),
          ...(typeof values.audience === 'string' ? { audience: values.audience } : {})
        })
        console.log(`added client ${client.clientId} (scopes: ${client.scopes.join(' ') || 'none'}${client.audience !== null ? `, audience ${client.audience}` : ''})`)
        console.log(`client_id=${client.clientId}`)
        console.log(`client_secret=${clientSecret}`)
        console.log('the secret is shown only now: store it in the service\'s secret configuration')
        return 0
      }, false) // the first client may create the store
    }
    case 'list': {
      const { values } = parseCommandArgs('clients list', rest, { json: { type: 'boolean' } }, 0)
      return await withClients(async (clients) => {
        const list = await clients.list()
        if (values.json === true) console.log(JSON.stringify(list, null, 2))
        else if (list.length === 0) console.log('no clients yet (portcullis clients add <client-id> --scope "...")')
        else {
          console.log(table(list.map((c) => ({
            client_id: c.clientId, scopes: c.scopes.join(' '), audience: c.audience ?? '(default)', created: new Date(c.createdAt).toISOString()
          })), ['client_id', 'scopes', 'audience', 'created']))
        }
        return 0
      })
    }
    case 'remove': {
      const { pos } = parseCommandArgs('clients remove', rest, {}, 1)
      return await withClients(async (clients) => {
        if (!await clients.remove(pos[0]!)) throw new UsageError(`clients remove: no client "${pos[0]}"`)
        console.log(`removed client ${pos[0]}`)
        return 0
      })
    }
    case undefined:
      throw new UsageError('clients: missing command (add, list or remove); see portcullis clients --help')
    default:
      throw new UsageError(`clients: unknown command "${cmd}" (add, list or remove)`)
  }
}
