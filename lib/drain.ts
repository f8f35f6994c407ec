import { setTimeout as sleep } from 'node:timers/promises'
import { durationText } from './env.js'

/**
 * Graceful stop behind a load balancer. On SIGTERM (what Kubernetes, systemd and `docker stop` send)
 * a process first turns its readiness (`/health/ready` on the admin listener) to 503, keeps serving
 * on its public listener for a drain delay, and only then stops accepting and finishes its in-flight
 * requests: Kubernetes takes the pod out of the Service's endpoints when it starts terminating it,
 * but every kube-proxy, ingress and load balancer learns that a little later, and until it does it
 * still sends new connections. SIGINT (Ctrl-C at a terminal) skips the delay: nobody routes to a
 * process run by hand.
 */

/** Seconds a process keeps serving after SIGTERM by default (GATEWAY_DRAIN_DELAY, AUTH_DRAIN_DELAY, SERVICE_DRAIN_DELAY). */
export const DEFAULT_DRAIN_DELAY = 5

/** The reason `/health/ready` gives while a process drains. */
export const DRAINING_REASON = 'shutting down: draining before the listener closes'

/** What a readiness check consults: true from the stop signal on. */
export class DrainState {
  #draining = false
  get draining (): boolean { return this.#draining }
  start (): void { this.#draining = true }
}

/** The delay to wait after `signal`: `delaySeconds` after SIGTERM, none after anything else. */
export function drainDelayFor (signal: string | undefined, delaySeconds: number): number {
  return signal === 'SIGTERM' ? delaySeconds : 0
}

/**
 * Marks `state` draining (readiness 503 from now on) and waits the delay `signal` calls for, logging
 * both ends. The public listener keeps serving meanwhile; the caller closes it afterwards.
 */
export async function drain (state: DrainState, signal: string | undefined, delaySeconds: number, log: { info(obj: object, msg: string): void }): Promise<void> {
  state.start()
  const wait = drainDelayFor(signal, delaySeconds)
  if (wait <= 0) return
  log.info({ event: 'drain', signal, delay: durationText(wait) }, 'draining: /health/ready answers 503, still serving until the delay ends')
  await sleep(wait * 1000)
}
