import { createServer, type IncomingHttpHeaders, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'

export interface SeenRequest { method: string, url: string, headers: IncomingHttpHeaders, body: string }

export interface EchoUpstream {
  url: string
  port: number
  /** Every request received, in order. */
  seen: SeenRequest[]
  /** Replaces the handler (e.g. to answer slowly). */
  handle: (fn: (req: SeenRequest, res: ServerResponse) => void) => void
  close(): Promise<void>
}

/** An upstream on port 0 that answers 200 with the request it saw (method, url, headers) as JSON. */
export async function echoUpstream (name = 'upstream'): Promise<EchoUpstream> {
  const seen: SeenRequest[] = []
  let handler = (req: SeenRequest, res: ServerResponse): void => {
    res.setHeader('content-type', 'application/json')
    res.end(JSON.stringify({ upstream: name, ...req }))
  }
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      const r = { method: req.method ?? '', url: req.url ?? '', headers: req.headers, body: Buffer.concat(chunks).toString() }
      seen.push(r)
      handler(r, res)
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as AddressInfo).port
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    seen,
    handle: (fn) => { handler = fn },
    close: () => new Promise<void>((resolve) => {
      server.closeAllConnections()
      server.close(() => resolve())
    })
  }
}
