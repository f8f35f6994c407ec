import closeWithGrace from 'close-with-grace'
import type { FastifyInstance } from 'fastify'
import { drain, DrainState } from '../lib/drain.js'
import { envHelp } from '../lib/env.js'
import { UsageError } from '../lib/errors.js'
import { listenOn } from '../lib/listen.js'
import { buildService, buildServiceAdmin } from './bootstrap.js'
import { DEFAULT_ADMIN_PORTS, DEFAULT_PORTS, SERVICE_ADMIN_PORT_VARS, SERVICE_KINDS, SERVICE_PROCESS_ENV, SERVICE_PORT_VARS, serviceConfigFromEnv, type ServiceKind } from './config.js'

/** Seconds past the drain delay a stopping service may take to finish its in-flight requests before it exits 1. */
const CLOSE_GRACE = 5

export const help = `Usage: portcullis services <user|order|product>

Runs one example service. Each verifies tokens itself against the issuer's JWKS and enforces its own
rights; order-service calls user-service and product-service with the caller's token and request id.
Their data lives in memory: they show how a real service plugs in.

  user     GET /users/me, GET /users/:id (self or admin), GET /users (admin)          default ports ${DEFAULT_PORTS.user}, admin ${DEFAULT_ADMIN_PORTS.user}
  order    GET /orders, GET /orders/:id (order:read), POST /orders (order:create)     default ports ${DEFAULT_PORTS.order}, admin ${DEFAULT_ADMIN_PORTS.order}
  product  GET /products, GET /products/:id, POST /products (product:write)          default ports ${DEFAULT_PORTS.product}, admin ${DEFAULT_ADMIN_PORTS.product}

GET /health answers on the public port; /health/live, /health/ready (the issuer's JWKS fetched) and
/metrics on SERVICE_ADMIN_HOST and the service's admin port. On SIGTERM /health/ready answers 503 at
once and the public listener keeps serving for SERVICE_DRAIN_DELAY, then stops accepting and
finishes its in-flight requests; SIGINT skips the delay, a second signal exits at once.

${envHelp(SERVICE_PROCESS_ENV)}`

export async function run (argv: string[]): Promise<number> {
  const kind = argv[0]
  if (kind === undefined || !(SERVICE_KINDS as readonly string[]).includes(kind)) {
    throw new UsageError(`expected one of ${SERVICE_KINDS.join(', ')}: portcullis services <user|order|product>`)
  }
  if (argv.length > 1) throw new UsageError(`services ${kind}: unknown argument "${argv[1]}" (settings come from the environment; see portcullis services --help)`)
  const config = serviceConfigFromEnv(kind as ServiceKind, process.env)
  const app = await buildService(config)
  const draining = new DrainState()
  let adminApp: FastifyInstance | undefined
  const closeAll = async (): Promise<void> => {
    try {
      await app.close()
    } finally {
      await adminApp?.close() // last: probes see 503, not a refused connection, until the public listener is gone
    }
  }
  const grace = closeWithGrace({ delay: (config.drainDelay + CLOSE_GRACE) * 1000, logger: false }, async ({ signal, err }) => {
    if (err !== undefined) app.log.error({ err }, 'stopping after an error')
    else {
      await drain(draining, signal, config.drainDelay, app.log)
      app.log.info({ signal }, 'stopping')
    }
    await closeAll()
  })
  try {
    adminApp = await buildServiceAdmin(app, draining)
    await listenOn(app, config.host, config.port, SERVICE_PORT_VARS[kind as ServiceKind])
    await listenOn(adminApp, config.adminHost, config.adminPort, SERVICE_ADMIN_PORT_VARS[kind as ServiceKind])
  } catch (err) {
    // e.g. the port is taken: exit 1 with the setting named (close-with-grace would exit 0)
    grace.uninstall()
    await closeAll()
    throw err
  }
  return 0
}
