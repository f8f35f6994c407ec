import { AsyncLocalStorage } from 'node:async_hooks'
import createError from '@fastify/error'
import fp from 'fastify-plugin'
import { Pool, type Dispatcher } from 'undici'
import type { FastifyPluginAsync, FastifyRequest } from 'fastify'
import {
  REQUEST_ID_HEADER, TRACEPARENT_HEADER, TRACESTATE_HEADER, UpstreamFailedError, UpstreamTimeoutError, UpstreamUnavailableError,
  formatTraceparent, parseTraceparent, requestIdOf as requestIdFrom, traceContextOf, validTracestate
} from '@portcullis/core'
import type { ServiceTokenSource } from './service-token.js'

export { clientCredentialsTokenSource, type ServiceTokenSource, type ClientCredentialsOptions } from './service-token.js'

/** Default deadline of one outgoing call (connect + headers + body), in milliseconds. */
export const DEFAULT_TIMEOUT_MS = 5000
/** Default connections per upstream origin. */
export const DEFAULT_CONNECTIONS = 16
export { REQUEST_ID_HEADER, UpstreamFailedError, UpstreamTimeoutError, UpstreamUnavailableError }

export const ServiceTokenError = createError('PORTCULLIS_SERVICE_TOKEN', 'Could not obtain a service token', 502)

/** What one incoming request hands to every outgoing call made while serving it. */
export interface PropagationContext {
  /** The caller's `Authorization` header, unchanged (undefined when the request had none). */
  readonly authorization: string | undefined
  readonly requestId: string
  /**
   * The W3C `traceparent` calls carry: this service's span of the request when @portcullis/tracing
   * is registered, else the caller's own header when well-formed (passed through). Undefined: none.
   */
  readonly traceparent?: string | undefined
  /** The caller's `tracestate`, passed on with `traceparent`. */
  readonly tracestate?: string | undefined
}

const storage = new AsyncLocalStorage<PropagationContext>()

/** The context of the request being served, or undefined in background work. */
export function currentContext (): PropagationContext | undefined {
  return storage.getStore()
}

/** Runs `fn` with `ctx` as the current context (what the plugin does for each request). */
export function runWithContext<T> (ctx: PropagationContext, fn: () => T): T {
  return storage.run(Object.freeze({ ...ctx }), fn)
}

/**
 * Runs `fn` outside any request context, so calls it makes use the service's own token. Use it for
 * work a request starts but that must not act as the caller (a timer it schedules, a queue consumer).
 */
export function runInBackground<T> (fn: () => T): T {
  return storage.exit(fn)
}

/**
 * The incoming `x-request-id` when it is a well-formed id (the rule the gateway applies too:
 * `REQUEST_ID_PATTERN` in @portcullis/core), else Fastify's request id, else a new UUID.
 */
export function requestIdOf (req: FastifyRequest): string {
  return requestIdFrom(req.headers, req.id)
}

type Headers = Record<string, string | string[] | undefined>

function headerNames (headers: Dispatcher.DispatchOptions['headers']): Headers {
  if (headers === undefined || headers === null) return {}
  if (Array.isArray(headers)) {
    const out: Headers = {}
    for (let i = 0; i + 1 < headers.length; i += 2) out[String(headers[i]).toLowerCase()] = String(headers[i + 1])
    return out
  }
  if (typeof (headers as Iterable<unknown>)[Symbol.iterator] === 'function') {
    const out: Headers = {}
    for (const [k, v] of headers as Iterable<[string, string | string[] | undefined]>) out[k.toLowerCase()] = v
    return out
  }
  const out: Headers = {}
  for (const [k, v] of Object.entries(headers as Headers)) out[k.toLowerCase()] = v
  return out
}

/**
 * The trace context calls made for `req` carry: its span in this service when @portcullis/tracing
 * gave it one, else the caller's well-formed `traceparent` (and `tracestate`) unchanged.
 */
export function traceHeadersOf (req: FastifyRequest): { traceparent: string | undefined, tracestate: string | undefined } {
  const tc = traceContextOf(req.raw)
  if (tc !== undefined) return { traceparent: formatTraceparent(tc), tracestate: tc.tracestate }
  const incoming = req.headers[TRACEPARENT_HEADER]
  if (parseTraceparent(incoming) === undefined) return { traceparent: undefined, tracestate: undefined }
  return { traceparent: incoming as string, tracestate: validTracestate(req.headers[TRACESTATE_HEADER]) }
}

/**
 * undici interceptor: adds the current request's `Authorization`, `x-request-id` and trace context
 * (`traceparent`, `tracestate`) to every call dispatched inside it. Headers the caller set explicitly win.
 */
export function propagationInterceptor (): Dispatcher.DispatcherComposeInterceptor {
  return (dispatch) => (opts, handler) => {
    const ctx = storage.getStore()
    if (ctx === undefined) return dispatch(opts, handler)
    const headers = headerNames(opts.headers)
    if (headers.authorization === undefined && ctx.authorization !== undefined) headers.authorization = ctx.authorization
    headers[REQUEST_ID_HEADER] ??= ctx.requestId
    if (ctx.traceparent !== undefined && headers[TRACEPARENT_HEADER] === undefined) {
      headers[TRACEPARENT_HEADER] = ctx.traceparent
      if (ctx.tracestate !== undefined) headers[TRACESTATE_HEADER] ??= ctx.tracestate
    }
    return dispatch({ ...opts, headers }, handler)
  }
}

export interface ServiceClientOptions {
  /** Deadline of one call in milliseconds (connect, headers and body). @defaultValue 5000 */
  timeout?: number
  /** Pool size. @defaultValue 16 */
  connections?: number
  /** Token for calls made outside a request; without it such calls carry no Authorization. */
  serviceToken?: ServiceTokenSource
}

export interface ServiceRequest {
  method?: Dispatcher.HttpMethod
  path: string
  body?: unknown
  headers?: Record<string, string>
  /** Overrides the client's timeout for this call, in milliseconds. */
  timeout?: number
}

export interface ServiceResponse<T = unknown> {
  status: number
  headers: Record<string, string | string[] | undefined>
  /** Parsed JSON when the upstream says so, else the text. */
  body: T
}

export interface ServiceClient {
  readonly baseUrl: string
  /**
   * Calls the upstream with the current request's identity (or the service token outside one).
   * Resolves with every response below 500; throws a 502 for 5xx and network failures, 504 for timeouts.
   */
  request<T = unknown>(req: ServiceRequest): Promise<ServiceResponse<T>>
  get<T = unknown>(path: string): Promise<ServiceResponse<T>>
  post<T = unknown>(path: string, body: unknown): Promise<ServiceResponse<T>>
  /** Idempotent. */
  close(): Promise<void>
}

const TIMEOUT_CODES = new Set(['UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'UND_ERR_CONNECT_TIMEOUT'])

function mapError (err: unknown): Error {
  const code = (err as { code?: string, name?: string } | null)?.code
  const name = (err as { name?: string } | null)?.name
  if ((code !== undefined && TIMEOUT_CODES.has(code)) || name === 'TimeoutError') {
    return new UpstreamTimeoutError({ cause: err })
  }
  if (code?.startsWith('PORTCULLIS_') === true) return err as Error
  return new UpstreamUnavailableError({ cause: err })
}

/** A pooled HTTP client for one upstream service that propagates the caller's identity. */
export function createServiceClient (baseUrl: string, opts: ServiceClientOptions = {}): ServiceClient {
  const origin = new URL(baseUrl)
  const basePath = origin.pathname.replace(/\/$/, '')
  const timeout = opts.timeout ?? DEFAULT_TIMEOUT_MS
  const pool = new Pool(origin.origin, {
    connections: opts.connections ?? DEFAULT_CONNECTIONS,
    connect: { timeout }
  })
  const dispatcher = pool.compose(propagationInterceptor())
  let closed: Promise<void> | undefined

  async function once<T> (req: ServiceRequest, authorization: string | undefined): Promise<ServiceResponse<T>> {
    const ms = req.timeout ?? timeout
    const headers: Record<string, string> = { accept: 'application/json', ...req.headers }
    if (authorization !== undefined) headers.authorization = authorization
    let body: string | undefined
    if (req.body !== undefined) {
      body = JSON.stringify(req.body)
      headers['content-type'] = 'application/json'
    }
    try {
      const res = await dispatcher.request({
        origin: origin.origin,
        path: basePath + req.path,
        method: req.method ?? (body === undefined ? 'GET' : 'POST'),
        headers,
        body,
        headersTimeout: ms,
        bodyTimeout: ms,
        signal: AbortSignal.timeout(ms)
      })
      const text = await res.body.text()
      if (res.statusCode >= 500) throw new UpstreamFailedError()
      const type = String(res.headers['content-type'] ?? '')
      let parsed: unknown = text
      if (type.includes('json') && text !== '') {
        try {
          parsed = JSON.parse(text)
        } catch (err) {
          throw new UpstreamFailedError({ cause: err })
        }
      }
      return { status: res.statusCode, headers: res.headers, body: parsed as T }
    } catch (err) {
      throw mapError(err)
    }
  }

  async function request<T> (input: ServiceRequest): Promise<ServiceResponse<T>> {
    // Header names are case-insensitive: `Authorization` set by the caller must count as set.
    const req: ServiceRequest = input.headers === undefined
      ? input
      : { ...input, headers: Object.fromEntries(Object.entries(input.headers).map(([k, v]) => [k.toLowerCase(), v])) }
    if (storage.getStore() !== undefined || opts.serviceToken === undefined || req.headers?.authorization !== undefined) {
      return await once<T>(req, undefined)
    }
    // Background call: the service acts as itself.
    const source = opts.serviceToken
    const token = await source.token().catch((err: unknown) => { throw new ServiceTokenError({ cause: err }) })
    const res = await once<T>(req, `Bearer ${token}`)
    if (res.status !== 401) return res
    // The token was refused (its key revoked, the client re-keyed): fetch a new one and retry once.
    source.invalidate(token)
    const fresh = await source.token().catch((err: unknown) => { throw new ServiceTokenError({ cause: err }) })
    return await once<T>(req, `Bearer ${fresh}`)
  }

  return {
    baseUrl,
    request,
    get: (path) => request({ path }),
    post: (path, body) => request({ method: 'POST', path, body }),
    close: () => (closed ??= pool.close())
  }
}

export interface PropagationPluginOptions {
  /** Token for calls made outside requests by clients created with `app.serviceClient`. */
  serviceToken?: ServiceTokenSource
  /** Default timeout of clients created with `app.serviceClient`, ms. @defaultValue 5000 */
  timeout?: number
}

declare module 'fastify' {
  interface FastifyInstance {
    /** Creates a propagating client for an upstream; closed with the app. */
    serviceClient(baseUrl: string, opts?: ServiceClientOptions): ServiceClient
  }
}

/**
 * Keeps each request's `Authorization`, `x-request-id` and trace context in an AsyncLocalStorage
 * context for the whole request, so service clients add them to outgoing calls; echoes
 * `x-request-id` on the reply. Register @portcullis/tracing before it: calls then name this
 * service's span of the request as their parent.
 */
const propagation: FastifyPluginAsync<PropagationPluginOptions> = async (app, opts) => {
  if (app.hasDecorator('serviceClient')) return
  if (opts.timeout !== undefined && (!Number.isFinite(opts.timeout) || opts.timeout <= 0)) {
    throw new Error('propagation plugin: option "timeout" must be a positive number of milliseconds')
  }
  const clients: ServiceClient[] = []
  app.decorate('serviceClient', (baseUrl: string, clientOpts: ServiceClientOptions = {}) => {
    const client = createServiceClient(baseUrl, {
      ...(opts.timeout !== undefined ? { timeout: opts.timeout } : {}),
      ...(opts.serviceToken !== undefined ? { serviceToken: opts.serviceToken } : {}),
      ...clientOpts
    })
    clients.push(client)
    return client
  })
  // `run(ctx, done)` rather than `enterWith`: the rest of the hook chain and the handler run inside
  // the context, and nothing leaks into the server's own async scope.
  app.addHook('onRequest', (req, reply, done) => {
    const requestId = requestIdOf(req)
    reply.header(REQUEST_ID_HEADER, requestId)
    const auth = req.headers.authorization
    const { traceparent, tracestate } = traceHeadersOf(req)
    storage.run(Object.freeze({ authorization: auth, requestId, traceparent, tracestate }), done)
  })
  app.addHook('onClose', async () => {
    await Promise.all(clients.map((c) => c.close()))
  })
}

export default fp(propagation, { fastify: '5.x', name: 'portcullis-propagation' })
