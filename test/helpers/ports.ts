import { createServer, type Server } from 'node:net'

/**
 * `n` distinct TCP ports that were free a moment ago on 127.0.0.1, for child processes that cannot
 * take port 0. Every probe stays bound until all are chosen, so the ports differ from each other.
 */
export async function freePorts (n: number): Promise<number[]> {
  const servers: Server[] = []
  try {
    const ports: number[] = []
    for (let i = 0; i < n; i++) {
      const srv = createServer()
      srv.unref()
      servers.push(srv)
      ports.push(await new Promise<number>((resolve, reject) => {
        srv.once('error', reject)
        srv.listen(0, '127.0.0.1', () => {
          const addr = srv.address()
          if (addr !== null && typeof addr === 'object') resolve(addr.port)
          else reject(new Error('no port'))
        })
      }))
    }
    return ports
  } finally {
    await Promise.all(servers.map((s) => new Promise<void>((resolve) => { if (s.listening) s.close(() => { resolve() }); else resolve() })))
  }
}

/** A TCP port that was free a moment ago on 127.0.0.1. */
export async function freePort (): Promise<number> {
  return (await freePorts(1))[0]!
}
