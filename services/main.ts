import closeWithGrace from 'close-with-grace'
import { envHelp } from '../lib/env.js'
import { UsageError } from '../lib/errors.js'
import { listenOn } from '../lib/listen.js'
import { buildService } from './bootstrap.js'
import { SERVICE_KINDS, SERVICE_PROCESS_ENV, SERVICE_PORT_VARS, serviceConfigFromEnv, type ServiceKind } from './config.js'

export const help = `Usage: portcullis services <user|order|product>

Runs one example service. Each verifies tokens itself against the issuer's JWKS and enforces its own
rights; order-service calls user-service and product-service with the caller's token and request id.
Their data lives in memory: they show how a real service plugs in.

  user     GET /users/me, GET /users/:id (self or admin), GET /users (admin)          default port 3001
  order    GET /orders, GET /orders/:id (order:read), POST /orders (order:create)     default port 3002
  product  GET /products, GET /products/:id, POST /products (product:write)          default port 3003

${envHelp(SERVICE_PROCESS_ENV)}`

export async function run (argv: string[]): Promise<number> {
  const kind = argv[0]
  if (kind === undefined || !(SERVICE_KINDS as readonly string[]).includes(kind)) {
    throw new UsageError(`expected one of ${SERVICE_KINDS.join(', ')}: portcullis services <user|order|product>`)
  }
  if (argv.length > 1) throw new UsageError(`services ${kind}: unknown argument "${argv[1]}" (settings come from the environment; see portcullis services --help)`)
  const config = serviceConfigFromEnv(kind as ServiceKind, process.env)
  const app = await buildService(config)
  const grace = closeWithGrace({ delay: 5000, logger: false }, async ({ signal, err }) => {
    if (err !== undefined) app.log.error({ err }, 'stopping after an error')
    else app.log.info({ signal }, 'stopping')
    await app.close()
  })
  try {
    await listenOn(app, config.host, config.port, SERVICE_PORT_VARS[kind as ServiceKind])
  } catch (err) {
    // e.g. the port is taken: exit 1 with the setting named (close-with-grace would exit 0)
    grace.uninstall()
    await app.close()
    throw err
  }
  return 0
}
