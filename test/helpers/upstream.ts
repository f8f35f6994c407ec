import { createServer, request as httpRequest, type IncomingHttpHeaders, type Server, type ServerResponse } from 'node:http'
import { request as httpsRequest } from 'node:https'
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

export interface RawResponse { status: number, headers: IncomingHttpHeaders, body: string, json: <T = Record<string, unknown>>() => T }

/**
 * One HTTP/1.1 request with the path sent exactly as given (fetch would normalise `..`, `%2e` and `//`)
 * and the headers exactly as given (including `Connection`).
 */
export function rawRequest (base: string, path: string, opts: { method?: string, headers?: Record<string, string>, body?: string, ca?: string | Buffer } = {}): Promise<RawResponse> {
  const u = new URL(base)
  return new Promise((resolve, reject) => {
    const mod = u.protocol === 'https:' ? httpsRequest : httpRequest
    const req = mod({
      host: u.hostname,
      port: u.port,
      path,
      method: opts.method ?? 'GET',
      headers: opts.headers,
      agent: false,
      ...(opts.ca === undefined ? {} : { ca: opts.ca, servername: 'localhost' })
    }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => {
        const body = Buffer.concat(chunks).toString()
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body, json: <T>() => JSON.parse(body) as T })
      })
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end(opts.body)
  })
}
