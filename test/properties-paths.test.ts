import { posix } from 'node:path'
import { Writable } from 'node:stream'
import fc from 'fast-check'
import { Client } from 'undici'
import t from 'tap'
import { buildGateway, gatewayLogger, isAmbiguousPath } from '../gateway/server.js'
import { parseGatewayConfig } from '../gateway/config.js'
import { echoUpstream } from './helpers/upstream.js'
import { startTestIssuer } from './helpers/issuer.js'
import { holds, runs } from './helpers/properties.js'

// Property-based checks of path normalisation (isAmbiguousPath, the gateway's onRequest refusal)
// and route matching (which route a path reaches). A short run here; PROPERTY_RUNS raises the
// cases per property (drills/09-properties.drill.ts runs 100,000).

/** Characters a request line can carry in a path (printable ASCII but `?` and `#`, which end it). */
const pathChar = fc.constantFrom(...Array.from({ length: 0x7f - 0x21 }, (_, i) => String.fromCharCode(0x21 + i)).filter((c) => c !== '?' && c !== '#'))
/** Segments: plain, dot-like, escaped, with path parameters, with backslashes and NULs, badly escaped. */
const segment = fc.oneof(
  fc.constantFrom('api', 'v1', '', '.', '..', '...', '.a', 'a.', '%2e', '%2E', '.%2e', '%2e.', '%2E%2e', '..;x', '.;', ';', '%3b', ';jsessionid=1', '%2f', '%2F', '%5c', '\\', 'a\\b', '%00', '%',
    '%zz', '%e0%a4', '%C3%A9', '%252e%252e', 'a.b', '%61pi', '~', '%7e'),
  fc.string({ unit: pathChar, maxLength: 6 })
)
const query = fc.option(fc.string({ unit: fc.oneof(pathChar, fc.constantFrom('?', '#', '/', '.')), maxLength: 12 }), { nil: undefined })
const url = fc.tuple(fc.array(segment, { maxLength: 6 }), query).map(([segs, q]) => `/${segs.join('/')}${q === undefined ? '' : `?${q}`}`)
const pathOf = (u: string): string => u.split('?', 1)[0]!
const names = (p: string): string[] => p.split('/')

t.test('a path the gateway lets through resolves to the same segments in every upstream reading (WHATWG URL, decode + normalise, drop ;params + normalise)', async (t) => {
  await holds(t, fc.property(url, (u) => {
    if (isAmbiguousPath(u)) return
    const path = pathOf(u)
    const decoded = decodeURIComponent(path) // the gateway let it through: it decodes
    const whatwg = new URL(`http://h${path}`).pathname
    if (names(whatwg).length !== names(path).length ||
      names(whatwg).some((s, i) => decodeURIComponent(s) !== decodeURIComponent(names(path)[i]!))) {
      throw new Error(`WHATWG URL reads ${path} as ${whatwg}`)
    }
    const solid = (p: string): string[] => names(p).filter((s) => s !== '')
    const normalised = posix.normalize(decoded)
    if (fc.stringify(solid(normalised)) !== fc.stringify(solid(decoded))) throw new Error(`decode + normalise reads ${path} as ${normalised}`)
    const withoutParams = names(path).map((s) => decodeURIComponent(s.split(';', 1)[0]!)).join('/')
    if (fc.stringify(solid(posix.normalize(withoutParams))) !== fc.stringify(solid(withoutParams))) throw new Error(`dropping ;params reads ${path} as ${posix.normalize(withoutParams)}`)
    if (decoded.includes('\\') || decoded.includes('\0')) throw new Error(`${path} decodes to a backslash or NUL`)
  }), runs())
})

/** One segment that some reader resolves, splits or cannot decode: every spelling of `.`/`..` (with ;params), backslashes, NUL, bad escapes. */
const hostile = fc.oneof(
  fc.tuple(fc.array(fc.constantFrom('.', '%2e', '%2E'), { minLength: 1, maxLength: 2 }), fc.option(fc.string({ unit: pathChar, maxLength: 4 }).map((s) => `;${s.replace(/\//g, '')}`), { nil: undefined }))
    .map(([dots, params]) => `${dots.join('')}${params ?? ''}`),
  fc.tuple(fc.stringMatching(/^[a-z]{0,3}$/), fc.constantFrom('\\', '%5c', '%5C', '%00'), fc.stringMatching(/^[a-z]{0,3}$/)).map(([a, b, c]) => `${a}${b}${c}`),
  fc.tuple(fc.stringMatching(/^[a-z]{0,3}$/), fc.constantFrom('%', '%g0', '%0', '%e0%a4', '%ff', '%c3', '%ED%A0%80')).map(([a, b]) => `${a}${b}`)
)

t.test('a path with a dot segment in any spelling, a backslash, a NUL or a bad escape, anywhere before the query, is refused as ambiguous', async (t) => {
  await holds(t, fc.property(fc.array(fc.stringMatching(/^[A-Za-z0-9_~-]{0,5}$/), { maxLength: 5 }), fc.nat(), hostile, query, (segs, at, bad, q) => {
    const all = [...segs]
    all.splice(at % (segs.length + 1), 0, bad)
    const u = `/${all.join('/')}${q === undefined ? '' : `?${q}`}`
    if (!isAmbiguousPath(u)) throw new Error(`${u} passes`)
  }), runs())
})

t.test('route matching through the gateway: a path reaches the route of the longest prefix it lies under (case-sensitively), else none (404, or 401 without a token); ambiguous paths 400; never a 5xx; no protected upstream reached without a token', async (t) => {
  const issuer = await startTestIssuer()
  const api = await echoUpstream('api')
  const pub = await echoUpstream('pub')
  // the access line names the route pattern the router matched (`/api/*` for `/api/x`)
  let lastAccess: { route?: string, statusCode?: number } = {}
  const sink = new Writable({ write (chunk: Buffer, _enc, cb) { for (const line of chunk.toString().split('\n')) if (line.includes('"request completed"')) lastAccess = JSON.parse(line) as typeof lastAccess; cb() } })
  const protectedPrefixes = ['/api', '/api/v1', '/api/v1/admin', '/apix', '/Pub', '/a.b~c']
  const gw = await buildGateway({
    config: parseGatewayConfig({
      issuers: [{ issuer: issuer.url, audience: 'portcullis' }],
      // 401s spend the failure budget (the global max): high enough to never block this client
      rateLimit: { max: 1_000_000_000, timeWindow: '1d' },
      routes: [...protectedPrefixes.map((prefix) => ({ prefix, upstream: api.url })), { prefix: '/pub', upstream: pub.url, auth: false },
        // an upstream with a path: the prefix is replaced by it
        { prefix: '/pub/deep', upstream: `${pub.url}/v2`, auth: false }]
    }, 'test'),
    logger: gatewayLogger('info', sink)
  })
  t.teardown(async () => { await gw.close(); await api.close(); await pub.close(); await issuer.close() })
  // app.inject would not do: light-my-request parses the URL with WHATWG URL, which resolves dot
  // segments and backslashes before the gateway sees them. A keep-alive client sends paths as they are.
  const address = await gw.app.listen({ port: 0, host: '127.0.0.1' })
  const client = new Client(address, { pipelining: 1 })
  t.teardown(() => client.close())
  const prefixes = [...protectedPrefixes, '/pub', '/pub/deep']
  const routeSegment = fc.oneof({ weight: 3, arbitrary: fc.constantFrom('api', 'v1', 'admin', 'apix', 'pub', 'Pub', 'PUB', 'API', 'a.b~c', 'deep', 'x', '') }, { weight: 2, arbitrary: segment })
  const routeUrl = fc.tuple(fc.array(routeSegment, { maxLength: 5 }), query).map(([segs, q]) => `/${segs.join('/')}${q === undefined ? '' : `?${q}`}`)

  await holds(t, fc.asyncProperty(routeUrl, async (u) => {
    const pubBefore = pub.seen.length
    lastAccess = {}
    let res: { statusCode: number }
    try {
      const r = await client.request({ method: 'GET', path: u })
      await r.body.dump()
      res = r
    } catch (err) {
      if ((err as { code?: string }).code === 'UND_ERR_INVALID_ARG') return // a path no client can send
      throw err
    }
    // the access line is written after the response: wait for it
    for (let i = 0; i < 100 && lastAccess.statusCode === undefined; i++) await new Promise((resolve) => setImmediate(resolve))
    if (res.statusCode >= 500) throw new Error(`${res.statusCode} for ${u}`)
    if (api.seen.length !== 0) throw new Error(`${u} reached the protected upstream without a token`)
    if (isAmbiguousPath(u)) {
      if (res.statusCode !== 400 || pub.seen.length !== pubBefore) throw new Error(`ambiguous ${u}: ${res.statusCode}`)
      return
    }
    // the router matches the path before `?`/`#`, percent-decoded except reserved characters (decodeURI)
    let routed: string
    try { routed = decodeURI(u.split(/[?#]/, 1)[0]!) } catch { throw new Error(`${u} is not ambiguous but does not decode`) }
    const expected = prefixes.filter((p) => routed === p || routed.startsWith(`${p}/`)).sort((a, b) => b.length - a.length)[0]
    if (expected === undefined) {
      // no route: the not-found handler (401 first without a token: jwks-auth's hook runs for it too)
      if ((res.statusCode !== 404 && res.statusCode !== 401) || lastAccess.route !== undefined) throw new Error(`${u}: ${res.statusCode} on ${lastAccess.route}, expected no route`)
      return
    }
    if (lastAccess.route !== expected && lastAccess.route !== `${expected}/*`) throw new Error(`${u} matched ${lastAccess.route}, expected ${expected}`)
    if (expected.startsWith('/pub')) {
      // the upstream gets its own path, then what follows the prefix; reply-from refuses (400) a
      // path that would start with `//` (a protocol-relative URL naming another host)
      const base = expected === '/pub/deep' ? '/v2' : ''
      const rest = base + routed.slice(expected.length)
      const seen = pub.seen.slice(pubBefore)
      // reply-from also refuses (400) any path whose decoding holds `/..` or `../`, even within a
      // segment (`/...`, `/..x`): not a dot segment, but never forwarded either
      const rawPath = decodeURIComponent(u.split('?', 1)[0]!)
      if (rest.startsWith('//') || rawPath.includes('/..') || rawPath.includes('../')) {
        if (res.statusCode !== 400 || seen.length !== 0) throw new Error(`${u}: ${res.statusCode}, ${seen.length} upstream requests`)
        return
      }
      if (res.statusCode !== 200 || seen.length !== 1) throw new Error(`${u}: ${res.statusCode}, ${seen.length} upstream requests`)
      const got = decodeURI(seen[0]!.url.split('?', 1)[0]!)
      if (got !== (rest === '' ? '/' : rest)) throw new Error(`${u}: the upstream got ${seen[0]!.url}`)
      if (isAmbiguousPath(seen[0]!.url)) throw new Error(`the upstream got the ambiguous path ${seen[0]!.url}`)
    } else if (res.statusCode !== 401) {
      throw new Error(`${u}: ${res.statusCode}, expected 401 on ${expected}`)
    }
  }), runs(), { timeout: 10_000 })
})

t.test('regression: the bare prefix with a query string reaches the upstream without the prefix (found by the route-matching property)', async (t) => {
  const pub = await echoUpstream('pub')
  const gw = await buildGateway({
    config: parseGatewayConfig({ routes: [{ prefix: '/pub', upstream: pub.url, auth: false }, { prefix: '/deep', upstream: `${pub.url}/v2`, auth: false }] }, 'test'),
    logger: false
  })
  t.teardown(async () => { await gw.close(); await pub.close() })
  const address = await gw.app.listen({ port: 0, host: '127.0.0.1' })
  const client = new Client(address)
  t.teardown(() => client.close())
  // shrunk counterexample: `/pub?\\#` reached the upstream as `/pub?\\#` (http-proxy's destination was
  // empty, and reply-from then forwarded the client's own path)
  for (const [path, upstreamUrl] of [['/pub?\\#', '/?\\#'], ['/pub?a=1', '/?a=1'], ['/%70ub?a=1', '/?a=1'], ['/pub', '/'], ['/pub/?a=1', '/?a=1'], ['/pub/x?a=1', '/x?a=1'], ['/deep?a=1', '/v2?a=1'], ['/deep/x?a=1', '/v2/x?a=1']]) {
    const r = await client.request({ method: 'GET', path })
    t.equal(r.statusCode, 200, path)
    t.equal((await r.body.json() as { url: string }).url, upstreamUrl, `${path} reaches the upstream as ${upstreamUrl}`)
  }
})
