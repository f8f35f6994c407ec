/**
 * A minimal upstream for drills: answers every request 200 `{"upstream":name}` and counts them
 * (keeps no request, unlike the test echo upstream, so long loads cost no memory). It can be
 * stopped (connections refused, open ones dropped) and started again on the same port.
 */
import { createServer, type Server } from 'node:http'
import type { Socket } from 'node:net'
import { once } from 'node:events'

export interface ToyUpstream {
  name: string
  port: number
  url: string
  /** Requests answered so far. */
  served: () => number
  up: () => boolean
  /** Stops listening and drops every open connection. */
  stop: () => Promise<void>
  /** Listens again on the same port. */
  start: () => Promise<void>
  close: () => Promise<void>
}

export async function startToyUpstream (name: string, port = 0): Promise<ToyUpstream> {
  let served = 0
  const body = JSON.stringify({ upstream: name })
  const sockets = new Set<Socket>()
  const server: Server = createServer((req, res) => {
    req.resume()
    req.on('end', () => {
      served++
      res.setHeader('content-type', 'application/json')
      res.end(body)
    })
  })
  server.on('connection', (s) => {
    sockets.add(s)
    s.on('close', () => sockets.delete(s))
  })
  server.listen(port, '127.0.0.1')
  await once(server, 'listening')
  const bound = (server.address() as { port: number }).port
  const stop = async (): Promise<void> => {
    if (!server.listening) return
    const closed = new Promise<void>((resolve) => server.close(() => resolve()))
    for (const s of sockets) s.destroy()
    await closed
  }
  return {
    name,
    port: bound,
    url: `http://127.0.0.1:${bound}`,
    served: () => served,
    up: () => server.listening,
    stop,
    start: async () => {
      if (server.listening) return
      server.listen(bound, '127.0.0.1')
      await once(server, 'listening')
    },
    close: stop
  }
}
