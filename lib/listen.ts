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
    throw listenError(err, setting, host, port)
  }
}

/** A listen failure as a ConfigError naming `setting` when the address is the problem; other errors as they are. */
export function listenError (err: unknown, setting: string, host: string, port: number, inUseHint = ''): unknown {
  const code = (err as { code?: string }).code
  if (code === 'EADDRINUSE') return new ConfigError(setting, `${host}:${port} is already in use${inUseHint}`)
  if (code === 'EACCES') return new ConfigError(setting, `no permission to listen on ${host}:${port}`)
  if (code === 'EADDRNOTAVAIL' || code === 'ENOTFOUND') return new ConfigError(setting, `cannot listen on ${host}:${port}: no such local address`)
  return err
}
