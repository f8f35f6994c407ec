import fp from 'fastify-plugin'
import type { FastifyPluginAsync } from 'fastify'
import type { Registry } from '@platformatic/prom-client'

export interface AdminPluginOptions {
  /**
   * Registries to serve on `/metrics` (merged when several), or a function returning them at each
   * scrape, for an app that replaces its registry (a gateway reloading its config builds new ones).
   */
  registries: Registry[] | (() => Registry[])
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
  const { Registry: RegistryClass } = await import('@platformatic/prom-client')
  const merged = (registries: Registry[]): Registry => {
    if (registries.length === 0) throw new Error('admin plugin: option "registries" must name at least one registry')
    return registries.length === 1 ? registries[0]! : RegistryClass.merge(registries)
  }
  const fixed = typeof opts.registries === 'function' ? undefined : merged(opts.registries)
  const dynamic = typeof opts.registries === 'function' ? opts.registries : undefined

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
    const registry = fixed ?? merged(dynamic!())
    reply.type(registry.contentType)
    return await registry.metrics()
  })
}

export default fp(admin, { fastify: '5.x', name: 'portcullis-admin' })
