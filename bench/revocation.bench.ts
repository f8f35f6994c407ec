import { createServer } from 'node:http'
import { randomUUID } from 'node:crypto'
import Fastify, { type FastifyInstance } from 'fastify'
import jwksAuth from '@portcullis/jwks-auth'
import { revocationDigest } from '@portcullis/core'
import { startTestIssuer } from '../test/helpers/issuer.js'

/**
 * The revocation check's cost per request on verified-token cache hits (target: at most 0.5 us),
 * measured in one run: the plugin's verify of a cached token with no revocation feed, and with a
 * feed holding 100,000 revoked sessions (a local Server-Sent Events server, as the auth service
 * serves it). Every call gets a fresh token string, as a request's header parsing produces. CPU time
 * of this process, interleaved rounds, medians.
 */
const ROUNDS = 15
const N = 100_000
const REVOKED = 100_000

const issuer = await startTestIssuer()
const token = issuer.sign({ sub: 'bench-user', sid: randomUUID(), jti: randomUUID(), role: 'user', permissions: ['a:read'] }, { ttl: 3600 })

// the feed: 100,000 sid revocations, then ready, then silence (a comment now and then)
const now = Date.now()
let events = ''
for (let i = 1; i <= REVOKED; i++) {
  events += `id: ${i}\nevent: revocation\ndata: {"kind":"sid","digest":"${revocationDigest('sid', randomUUID())}","revokedAt":${now},"expiresAt":${now + 3_600_000}}\n\n`
}
const feed = createServer((_req, res) => {
  res.writeHead(200, { 'content-type': 'text/event-stream' })
  res.write(events)
  res.write(`event: ready\ndata: {"seq":${REVOKED}}\n\n`)
  const ping = setInterval(() => res.write(': ping\n\n'), 5000)
  res.on('close', () => clearInterval(ping))
})
await new Promise<void>((resolve) => feed.listen(0, '127.0.0.1', resolve))
const feedUrl = `http://127.0.0.1:${(feed.address() as { port: number }).port}/auth/revocations`

async function appWith (revocations: boolean): Promise<FastifyInstance> {
  const app = Fastify()
  await app.register(jwksAuth, { issuers: [{ issuer: issuer.url, audience: issuer.audience, ...(revocations ? { revocations: feedUrl } : {}) }], global: false })
  await app.ready()
  await app.jwksAuth.refresh()
  while (!app.jwksAuth.isReady()) await new Promise((resolve) => setTimeout(resolve, 20))
  return app
}
const off = await appWith(false)
const on = await appWith(true)

const cpuUs = (): number => { const u = process.cpuUsage(); return u.user + u.system }
const fresh = (t: string): string => Buffer.from(t).toString()

async function perCall (app: FastifyInstance): Promise<number> {
  const strings = Array.from({ length: N }, () => fresh(token))
  const t0 = cpuUs()
  for (let i = 0; i < N; i++) {
    const u = app.jwksAuth.verify(strings[i]!)
    if (u instanceof Promise) await u
  }
  return (cpuUs() - t0) / N
}

await perCall(off)
await perCall(on)
const offs: number[] = []
const ons: number[] = []
for (let r = 0; r < ROUNDS; r++) {
  if (r % 2 === 0) { offs.push(await perCall(off)); ons.push(await perCall(on)) } else { ons.push(await perCall(on)); offs.push(await perCall(off)) }
}
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!
const diffs = offs.map((o, i) => ons[i]! - o)
const cost = median(diffs)
console.log(`cache hit, no revocation feed:              ${median(offs).toFixed(3)} us CPU per verify (median of ${ROUNDS} rounds of ${N.toLocaleString('en')})`)
console.log(`cache hit, feed with ${REVOKED.toLocaleString('en')} revoked sessions: ${median(ons).toFixed(3)} us`)
console.log(`revocation check: ${cost >= 0 ? '+' : ''}${cost.toFixed(3)} us per request (median of the paired differences)`)
console.log('\ntargets:')
console.log(`  ${cost <= 0.5 ? 'PASS' : 'FAIL'}  revocation check on cache hits <= 0.5 us: ${cost.toFixed(3)} us`)
await off.close()
await on.close()
feed.closeAllConnections()
feed.close()
await issuer.close()
if (cost > 0.5) process.exitCode = 1
