import { listenOn } from '../lib/listen.js'
import { stopSignal } from '../lib/signals.js'
import Fastify, { type FastifyInstance } from 'fastify'
import pino, { type Logger } from 'pino'
import { envHelp, type Env } from '../lib/env.js'
import { processEnvProblems, reportCheck } from '../lib/check.js'
import { logDestination, loggerOptions } from '../lib/logger.js'
import { admin } from '@portcullis/metrics'
import { collectProcessMetrics, promClient } from '@portcullis/metrics'
import { openCommandStore } from '../store/command-store.js'
import { openKeyStore } from '../store/keys.js'
import { keySecretsProblem, loadKeySecrets } from '../store/secrets.js'
import { ROTATION_PROCESS_ENV, rotationConfigFromEnv, type RotationConfig } from './config.js'
import { RotationBootError, RotationUsageError } from './errors.js'
import { rotationMetrics } from './metrics.js'
import { RotationWorker, scheduleTrigger, type Trigger } from './worker.js'

export const help = `Usage: portcullis rotation [--once | --check]

Runs the key-rotation worker: one tick at start (an empty store gets its first key, active at once),
then a tick on ROTATION_SCHEDULE. Each tick pre-publishes, activates, retires and prunes keys as the
timings say, in one transaction; several workers on one store are safe.

Options:
  --once        run one tick and exit (for system cron or a Kubernetes CronJob); no metrics listener
  --check       validate the settings as a start would (each variable, the schedule, the key timing
                rules, the key-encryption secrets), without opening the store: prints ok (exit 0)
                or every problem (exit 1)
  -h, --help    show this help

${envHelp(ROTATION_PROCESS_ENV)}`

function parseArgs (argv: string[]): { once: boolean, check: boolean } {
  let once = false
  let check = false
  for (const a of argv) {
    if (a === '--once') once = true
    else if (a === '--check') check = true
    else throw new RotationUsageError(`rotation: unknown argument "${a}" (see portcullis rotation --help)`)
  }
  if (once && check) throw new RotationUsageError('rotation: --once and --check do not go together')
  return { once, check }
}

/** `portcullis rotation --check`: every problem of the settings, one per variable; nothing is opened. */
export function check (env: Env = process.env, out?: (line: string) => void, err?: (line: string) => void): number {
  const problems = processEnvProblems(env, ROTATION_PROCESS_ENV, rotationConfigFromEnv)
  const secrets = keySecretsProblem(env)
  if (secrets !== undefined) problems.push(secrets)
  return reportCheck('portcullis rotation --check', problems, out, err)
}

async function metricsServer (cfg: RotationConfig, registry: promClient.Registry, ready: () => boolean | string, log: Logger): Promise<FastifyInstance> {
  const app = Fastify({ logger: false })
  await app.register(admin, { registries: [registry], ready })
  await listenOn(app, cfg.metricsHost, cfg.metricsPort, 'ROTATION_METRICS_PORT')
  const addr = app.server.address()
  log.info({ event: 'metrics_listening', host: cfg.metricsHost, port: typeof addr === 'object' && addr !== null ? addr.port : cfg.metricsPort }, 'rotation metrics listening')
  return app
}

/**
 * What a caller may put in place of the real clock and schedule: tests drive several worker
 * processes through simulated periods with them. The command itself reads none of this from the
 * environment, so nothing an operator sets can move the worker's clock.
 */
export interface RunDeps {
  /** Epoch-ms clock. @defaultValue Date.now */
  now?: () => number
  /** What calls `fire` for each scheduled tick. @defaultValue croner on ROTATION_SCHEDULE */
  trigger?: (fire: () => void) => Trigger
  /** Describes `trigger` in the `scheduled` log line. @defaultValue ROTATION_SCHEDULE */
  triggerName?: string
  /** Milliseconds each changing transaction is held open before commit (see WorkerOptions). @defaultValue 0 */
  holdTxMs?: number
}

export async function run (argv: string[], deps: RunDeps = {}): Promise<number> {
  const { once, check: checkOnly } = parseArgs(argv)
  if (checkOnly) return check()
  const cfg = rotationConfigFromEnv(process.env)
  const log = pino(loggerOptions('rotation', cfg.logLevel), logDestination())
  const now = deps.now ?? Date.now
  const secrets = await loadKeySecrets(process.env, cfg.db.dataDir, log)
  // the store of a stack running on the same data folder, or a refusal naming both (store/command-store.ts)
  const { db } = await openCommandStore(process.env, { existing: false })
  let server: FastifyInstance | undefined
  let trigger: Trigger | undefined
  try {
    const store = await openKeyStore(db, { secrets, now, timings: cfg.timings, keySize: cfg.keySize, log })
    const registry = new promClient.Registry()
    if (!once) collectProcessMetrics(registry)
    const metrics = rotationMetrics(now, registry)
    const worker = new RotationWorker({ store, timings: cfg.timings, keySize: cfg.keySize, log, metrics, holdTxMs: deps.holdTxMs ?? 0 })
    log.info({ event: 'start', store: db.description, once, secrets: secrets.source, timings: cfg.timings, keySize: cfg.keySize }, 'rotation worker starting')

    if (once) {
      const out = await worker.tick()
      log.info({ event: 'done', result: out.result, changes: out.changes.length }, 'rotation tick done')
      return 0
    }

    const stopped = stopSignal()
    const boot = worker.tick().then(() => undefined, (err: unknown) => err)
    const first = await Promise.race([boot, stopped.then((sig) => ({ sig }))])
    if (first !== undefined && !(typeof first === 'object' && first !== null && 'sig' in first)) {
      throw new RotationBootError((first as Error).message)
    }
    if (first === undefined) {
      server = await metricsServer(cfg, registry, () => worker.lastError ?? true, log)
      const fire = (): void => worker.requestTick()
      trigger = deps.trigger !== undefined ? deps.trigger(fire) : scheduleTrigger(cfg.schedule, fire)
      log.info({ event: 'scheduled', schedule: deps.trigger !== undefined ? (deps.triggerName ?? 'injected') : cfg.schedule }, 'rotation worker running')
    }
    const sig = await stopped
    log.info({ event: 'shutdown', signal: sig }, 'stopping: finishing the running tick')
    trigger?.stop()
    await worker.stop()
    await boot
    return 0
  } finally {
    trigger?.stop()
    await server?.close()
    await db.close()
  }
}
