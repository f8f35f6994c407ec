import fp from 'fastify-plugin'
import type { FastifyPluginAsync } from 'fastify'
import type { Registry } from '@platformatic/prom-client'

export interface AdminPluginOptions {
  /** Registries to serve on `/metrics` (merged when several). */
  registries: Registry[]
  /**
   * Readiness check for `/health/ready`: resolve `true` (200) or `false` / a reason string (503).
   * @defaultValue always ready
   */
  ready?: () => boolean | string | Promise<boolean | string>
}

/**
 * The admin listener's routes: `/health/live` (the process answers), `/health/ready` (it can do its
 * job) and `/metrics` (Prometheus text). Register it on a separate Fastify instance bound to the admin
 * port so none of this is reachable through the public listener.
 */
const admin: FastifyPluginAsync<AdminPluginOptions> = async (app, opts) => {
  if (opts.registries.length === 0) throw new Error('admin plugin: option "registries" must name at least one registry')
  const { Registry: RegistryClass } = await import('@platformatic/prom-client')
  const registry = opts.registries.length === 1 ? opts.registries[0]! : RegistryClass.merge(opts.registries)

  app.get('/health/live', { logLevel: 'warn' }, async () => ({ status: 'ok' }))
  app.get('/health/ready', { logLevel: 'warn' }, async (_req, reply) => {
    let result: boolean | string
    try {
      result = opts.ready === undefined ? true : await opts.ready()
    } catch (err) {
      result = err instanceof Error ? err.message : 'readiness check failed'
    }
    if (result === true) return { status: 'ready' }
    return reply.code(503).send({ status: 'not_ready', reason: result === false ? 'not ready' : result })
  })
  app.get('/metrics', { logLevel: 'warn' }, async (_req, reply) => {
    reply.type(registry.contentType)
    return await registry.metrics()
  })
}

export default fp(admin, { fastify: '5.x', name: 'portcullis-admin' })
