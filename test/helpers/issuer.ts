import { createHash, createHmac, generateKeyPairSync, randomUUID, sign as cryptoSign, constants, type KeyObject } from 'node:crypto'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import { EventEmitter, once } from 'node:events'

/**
 * A test token issuer: an HTTP server on port 0 serving a JWKS (with ETag / 304), counting fetches,
 * able to rotate or remove keys, answer 5xx, reset connections or hang; plus token signing with any
 * claims, headers, keys and algorithms. Usable by every area's tests.
 */

export interface PublicJwk { kty: 'RSA', kid: string, use: 'sig', alg: string, n: string, e: string }

export interface TestKey {
  kid: string
  privateKey: KeyObject
  publicKey: KeyObject
  bits: number
  /** The JWK as published (kty, kid, use, alg, n, e). */
  jwk: PublicJwk
}

const keyCache = new Map<string, TestKey>()

export function b64url (data: string | Buffer): string {
  return Buffer.from(data).toString('base64url')
}

/** RFC 7638 thumbprint of an RSA public JWK. */
export function thumbprint (n: string, e: string): string {
  return createHash('sha256').update(JSON.stringify({ e, kty: 'RSA', n })).digest('base64url')
}

/**
 * An RSA key pair with its JWK. With a `label` the key is generated once per process and reused
 * (2048-bit generation costs ~100 ms); without one it is always new.
 */
export function rsaKey (opts: { bits?: number, label?: string, kid?: string, alg?: string } = {}): TestKey {
  const bits = opts.bits ?? 2048
  const cacheKey = opts.label === undefined ? undefined : `${opts.label}:${bits}:${opts.kid ?? ''}:${opts.alg ?? ''}`
  const hit = cacheKey === undefined ? undefined : keyCache.get(cacheKey)
  if (hit !== undefined) return hit
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: bits })
  const j = publicKey.export({ format: 'jwk' }) as { n: string, e: string }
  const kid = opts.kid ?? thumbprint(j.n, j.e)
  const key: TestKey = { kid, privateKey, publicKey, bits, jwk: { kty: 'RSA', kid, use: 'sig', alg: opts.alg ?? 'RS256', n: j.n, e: j.e } }
  if (cacheKey !== undefined) keyCache.set(cacheKey, key)
  return key
}

/** Signs `header.payload` with any algorithm (RS*, PS*, HS*, or `none` / a null key for no signature). */
export function signJwt (header: Record<string, unknown> | string, payload: Record<string, unknown> | string, key: KeyObject | Buffer | string | null, alg?: string): string {
  const h = typeof header === 'string' ? header : b64url(JSON.stringify(header))
  const p = typeof payload === 'string' ? payload : b64url(JSON.stringify(payload))
  const input = `${h}.${p}`
  const algorithm = alg ?? (typeof header === 'object' && typeof header.alg === 'string' ? header.alg : 'RS256')
  if (key === null || algorithm.toLowerCase() === 'none') return `${input}.`
  const hash = `sha${algorithm.slice(2)}`
  let sig: Buffer
  if (algorithm.startsWith('HS')) {
    sig = createHmac(hash, key as Buffer | string).update(input).digest()
  } else if (algorithm.startsWith('PS')) {
    sig = cryptoSign(hash, Buffer.from(input), { key: key as KeyObject, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: constants.RSA_PSS_SALTLEN_DIGEST })
  } else {
    sig = cryptoSign(hash, Buffer.from(input), key as KeyObject)
  }
  return `${input}.${sig.toString('base64url')}`
}

export type IssuerMode = 'ok' | 'error' | 'reset' | 'hang'

export interface SignOptions {
  /** Signing key. @defaultValue the issuer's first published key */
  key?: TestKey
  /** Header `kid`. @defaultValue key.kid */
  kid?: unknown
  /** Header `alg`. @defaultValue RS256 */
  alg?: string
  /** Extra or overriding header members (a member set to undefined is removed). */
  header?: Record<string, unknown>
  /** Claims to drop from the defaults. */
  omit?: string[]
  /** "Now" in epoch seconds for the default iat/nbf/exp. @defaultValue the real clock */
  now?: number
  /** Lifetime in seconds for the default exp. @defaultValue 900 */
  ttl?: number
}

export interface TestIssuer {
  /** The issuer identifier (`iss`), e.g. http://127.0.0.1:PORT */
  url: string
  jwksUri: string
  audience: string
  /** JWKS GETs answered or attempted (any mode). */
  fetches: number
  /** Of those, answered 304 Not Modified. */
  notModified: number
  /** Every request the server received (method and url). */
  requests: Array<{ method: string, url: string }>
  mode: IssuerMode
  /** Keys currently published, in order (the first signs by default). */
  published: TestKey[]
  /** Publishes a key (a new 2048-bit key when none given). */
  addKey (key?: TestKey): TestKey
  removeKey (kid: string): void
  /** Replace the JWKS document wholesale with any JSON (bypasses `published`). null goes back to `published`. */
  rawJwks: unknown
  /** Signs a token: default claims iss/aud/sub/iat/nbf/exp/jti, overridden by `claims` (undefined removes). */
  sign (claims?: Record<string, unknown>, opts?: SignOptions): string
  /** Stops listening (connections refused) until `up()`; open connections are dropped. */
  down (): Promise<void>
  /** Listens again on the same port. */
  up (): Promise<void>
  /** Resolves when the JWKS has been requested `count` times in total. */
  waitForFetches (count: number): Promise<void>
  close (): Promise<void>
}

export async function startTestIssuer (opts: { audience?: string, keys?: TestKey[], jwksPath?: string } = {}): Promise<TestIssuer> {
  const jwksPath = opts.jwksPath ?? '/.well-known/jwks.json'
  const events = new EventEmitter()
  const sockets = new Set<Socket>()
  const hanging = new Set<ServerResponse>()

  const handler = (req: IncomingMessage, res: ServerResponse): void => {
    issuer.requests.push({ method: req.method ?? '', url: req.url ?? '' })
    if (req.url !== jwksPath) {
      res.statusCode = 404
      res.end()
      return
    }
    issuer.fetches++
    events.emit('fetch', issuer.fetches)
    if (issuer.mode === 'reset') {
      req.socket.destroy()
      return
    }
    if (issuer.mode === 'hang') {
      hanging.add(res)
      return
    }
    if (issuer.mode === 'error') {
      res.statusCode = 503
      res.setHeader('content-type', 'application/json')
      res.end('{"error":"unavailable"}')
      return
    }
    const body = JSON.stringify(issuer.rawJwks ?? { keys: issuer.published.map((k) => k.jwk) })
    const etag = `"${createHash('sha256').update(body).digest('base64url').slice(0, 27)}"`
    res.setHeader('etag', etag)
    res.setHeader('cache-control', 'max-age=60')
    if (req.headers['if-none-match'] === etag) {
      issuer.notModified++
      res.statusCode = 304
      res.end()
      return
    }
    res.setHeader('content-type', 'application/json')
    res.end(body)
  }

  const server = createServer(handler)
  server.on('connection', (s) => {
    sockets.add(s)
    s.on('close', () => sockets.delete(s))
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const addr = server.address()
  if (addr === null || typeof addr !== 'object') throw new Error('issuer did not bind')
  const url = `http://127.0.0.1:${addr.port}`

  const issuer: TestIssuer = {
    url,
    jwksUri: `${url}${jwksPath}`,
    audience: opts.audience ?? 'portcullis',
    fetches: 0,
    notModified: 0,
    requests: [],
    mode: 'ok',
    published: opts.keys ?? [rsaKey({ label: 'issuer-default' })],
    rawJwks: null,
    addKey (key?: TestKey) {
      const k = key ?? rsaKey()
      this.published = [...this.published, k]
      return k
    },
    removeKey (kid: string) {
      this.published = this.published.filter((k) => k.kid !== kid)
    },
    sign (claims: Record<string, unknown> = {}, o: SignOptions = {}) {
      const key = o.key ?? this.published[0]
      if (key === undefined) throw new Error('no key to sign with')
      const now = o.now ?? Math.floor(Date.now() / 1000)
      const payload: Record<string, unknown> = {
        iss: url, aud: this.audience, sub: 'user-1', iat: now, nbf: now, exp: now + (o.ttl ?? 900), jti: randomUUID()
      }
      for (const c of o.omit ?? []) Reflect.deleteProperty(payload, c)
      for (const [k, v] of Object.entries(claims)) {
        if (v === undefined) Reflect.deleteProperty(payload, k)
        else payload[k] = v
      }
      const header: Record<string, unknown> = { alg: o.alg ?? 'RS256', typ: 'JWT', kid: 'kid' in o ? o.kid : key.kid }
      for (const [k, v] of Object.entries(o.header ?? {})) {
        if (v === undefined) Reflect.deleteProperty(header, k)
        else header[k] = v
      }
      return signJwt(header, payload, key.privateKey, o.alg ?? 'RS256')
    },
    async down () {
      for (const res of hanging) res.destroy()
      for (const sock of sockets) sock.destroy()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    },
    async up () {
      server.listen(addr.port, '127.0.0.1')
      await once(server, 'listening')
    },
    async waitForFetches (count: number) {
      while (this.fetches < count) await once(events, 'fetch')
    },
    async close () {
      if (!server.listening) return
      await this.down()
    }
  }
  return issuer
}

/**
 * A server that must never be contacted (an attacker's JWKS / jku / x5u target): counts every
 * request it receives.
 */
export async function startAttackerServer (): Promise<{ url: string, hits: number, close (): Promise<void> }> {
  const state = { url: '', hits: 0, close: async () => {} }
  const server = createServer((_req, res) => {
    state.hits++
    res.setHeader('content-type', 'application/json')
    res.end('{"keys":[]}')
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const addr = server.address()
  if (addr === null || typeof addr !== 'object') throw new Error('attacker did not bind')
  state.url = `http://127.0.0.1:${addr.port}`
  state.close = async () => {
    server.closeAllConnections()
    await new Promise<void>((resolve) => server.close(() => resolve()))
  }
  return state
}
