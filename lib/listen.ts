import type { FastifyInstance } from 'fastify'
import { ConfigError } from './errors.js'

/**
 * `app.listen` whose failures name the setting that chose the address: "AUTH_PORT: 127.0.0.1:3000 is
 * already in use" instead of a bare EADDRINUSE.
 */
export async function listenOn (app: FastifyInstance, host: string, port: number, setting: string): Promise<void> {
  try {
    await app.listen({ host, port })
  } catch (err) {
    const code = (err as { code?: string }).code
    if (code === 'EADDRINUSE') throw new ConfigError(setting, `${host}:${port} is already in use`)
    if (code === 'EACCES') throw new ConfigError(setting, `no permission to listen on ${host}:${port}`)
    if (code === 'EADDRNOTAVAIL' || code === 'ENOTFOUND') throw new ConfigError(setting, `cannot listen on ${host}:${port}: no such local address`)
    throw err
  }
}
