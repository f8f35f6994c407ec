import { createConnection } from 'node:net'

export const TEST_REDIS_URL = process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379'

/** True when a Redis server answers PING at the URL. */
export function redisReachable (url = TEST_REDIS_URL): Promise<boolean> {
  const u = new URL(url)
  return new Promise((resolve) => {
    const sock = createConnection({ host: u.hostname, port: Number(u.port || 6379) })
    const done = (ok: boolean): void => { sock.destroy(); resolve(ok) }
    sock.setTimeout(2000, () => done(false))
    sock.on('error', () => done(false))
    sock.on('connect', () => sock.write('PING\r\n'))
    sock.on('data', (d) => done(d.toString().startsWith('+PONG')))
  })
}

/** Skip reason for Redis tests, or false; throws when CI=true and Redis is unreachable. */
export async function redisSkip (): Promise<string | false> {
  if (await redisReachable()) return false
  if (process.env.CI === 'true') throw new Error(`Redis is required when CI=true but ${TEST_REDIS_URL} is unreachable`)
  return `Redis not reachable at ${TEST_REDIS_URL} (required only when CI=true)`
}
