import { createServer } from 'node:http'
import Fastify from 'fastify'
import httpProxy from '@fastify/http-proxy'
import { buildGateway, gatewayLogger } from '../gateway/server.js'
import { parseGatewayConfig } from '../gateway/config.js'

/**
 * One process under test for bench/gateway.bench.ts, started as a child with an IPC channel:
 *   upstream                 a tiny JSON server
 *   bare <upstream>          Fastify + one @fastify/http-proxy registration, nothing else
 *   gateway <upstream> <iss> the full gateway; BENCH_FEATURES switches parts off, BENCH_TOKEN_CACHE=0 disables the verified-token cache
 * Sends { port } when listening. Its stdout (the info logs) goes to /dev/null.
 */
const [mode, upstream, issuer] = process.argv.slice(2)

async function main (): Promise<number> {
  if (mode === 'upstream') {
    const body = JSON.stringify({ ok: true, items: [1, 2, 3] })
    const srv = createServer((_req, res) => {
      res.setHeader('content-type', 'application/json')
      res.end(body)
    })
    srv.keepAliveTimeout = 60_000
    await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve))
    return (srv.address() as { port: number }).port
  }
  if (mode === 'bare') {
    const app = Fastify({ logger: false })
    await app.register(httpProxy, { upstream: upstream!, prefix: '/api' })
    await app.listen({ port: 0, host: '127.0.0.1' })
    return (app.server.address() as { port: number }).port
  }
  const off = new Set((process.env.BENCH_FEATURES ?? '').split(',').filter((s) => s !== ''))
  const gw = await buildGateway({
    config: parseGatewayConfig({
      issuers: [{ issuer: issuer!, audience: 'portcullis' }],
      rateLimit: { max: 1_000_000_000, timeWindow: '1m' },
      routes: [{ prefix: '/api', upstream: upstream! }]
    }, 'bench'),
    logger: gatewayLogger(off.has('logs') ? 'warn' : 'info'),
    features: { rateLimit: !off.has('rateLimit'), metrics: !off.has('metrics'), auth: !off.has('auth') },
    auth: process.env.BENCH_TOKEN_CACHE === '0' ? { tokenCacheMax: 0 } : {}
  })
  await gw.app.listen({ port: 0, host: '127.0.0.1' })
  if (!off.has('auth')) await gw.app.jwksAuth.refresh()
  return (gw.app.server.address() as { port: number }).port
}

// 'mem': answer with process.memoryUsage() after a full GC when --expose-gc is on (live heap vs RSS)
process.on('message', (m) => {
  if (m !== 'mem') return
  const gc = (globalThis as { gc?: () => void }).gc
  if (gc !== undefined) gc()
  process.send!({ mem: process.memoryUsage() })
})

main().then((port) => process.send!({ port }), (err: unknown) => {
  console.error(err)
  process.exit(1)
})
// exit normally (so --cpu-prof can write its profile) when the bench ends
process.on('SIGTERM', () => process.exit(0))
process.on('disconnect', () => process.exit(0))
