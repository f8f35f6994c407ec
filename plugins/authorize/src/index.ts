import fp from 'fastify-plugin'
import type { FastifyContextConfig, FastifyPluginAsync, FastifyRequest, preHandlerAsyncHookHandler, preHandlerHookHandler, RouteOptions } from 'fastify'
import { forbiddenError, hookList, httpErrorFor, type VerifiedUser } from '@portcullis/core'

/** What a route needs beyond a valid token. Every listed entry kind must be satisfied. */
export interface RouteAuthRules {
  /** The token's `role` must be one of these. */
  roles?: string[]
  /** The token's `permissions` must contain all of these. */
  permissions?: string[]
  /** The token's `scope` must contain all of these. */
  scopes?: string[]
}

declare module 'fastify' {
  interface FastifyContextConfig {
    /** `false`: no token needed. An object: a valid token plus these rules. Absent: a valid token (global mode). */
    auth?: false | RouteAuthRules
  }
  interface FastifyInstance {
    /** Set once the authorize plugin enforces `config.auth` rules in this context. */
    portcullisAuthorize: true
  }
}

/** Marks a route config whose rules onRoute already appended as a preHandler. */
const ENFORCED = Symbol('portcullis.authorize.enforced')

function currentUser (request: FastifyRequest): VerifiedUser | null {
  return (request as unknown as { user?: VerifiedUser | null }).user ?? null
}

/** The kind of right a refused request lacked: the `reason` of a denial (a bounded set, fit for a metric label). */
export const DENIAL_REASONS = ['role', 'permission', 'scope'] as const
export type DenialReason = typeof DENIAL_REASONS[number]

export interface AuthorizePluginOptions {
  /**
   * Called for every request the plugin refuses with 403, with the kind of right it lacked (jwks-auth
   * counts them in `portcullis_authorization_denials_total`). Not called for the 401 of an
   * unauthenticated request.
   */
  onDenied?: (request: FastifyRequest, reason: DenialReason) => void
}

/** The first right a user lacks, by kind, or null when the rules are satisfied. */
function lacking (user: VerifiedUser, rules: RouteAuthRules): { reason: DenialReason, missing: string } | null {
  if (rules.roles !== undefined && rules.roles.length > 0 && (user.role === undefined || !rules.roles.includes(user.role))) {
    return { reason: 'role', missing: `role (one of ${rules.roles.join(', ')})` }
  }
  for (const p of rules.permissions ?? []) if (!user.permissions.includes(p)) return { reason: 'permission', missing: `permission ${p}` }
  for (const s of rules.scopes ?? []) if (!user.scope.includes(s)) return { reason: 'scope', missing: `scope ${s}` }
  return null
}

/** Why a user fails the rules, or null when the rules are satisfied. */
export function missingRight (user: VerifiedUser, rules: RouteAuthRules): string | null {
  return lacking(user, rules)?.missing ?? null
}

/** The refusal for a request that fails `rules`, or null when it may pass. */
function refusal (request: FastifyRequest, rules: RouteAuthRules, onDenied?: AuthorizePluginOptions['onDenied']): Error | null {
  const user = currentUser(request)
  if (user === null) return httpErrorFor('missing')
  const lack = lacking(user, rules)
  if (lack === null) return null
  onDenied?.(request, lack.reason)
  request.log.info({ event: 'auth_forbidden', sub: user.sub, route: request.routeOptions.url, method: request.method, missing: lack.missing }, 'authorization refused')
  return forbiddenError()
}

/**
 * A preHandler enforcing rules: 401 (a plain `Bearer` challenge) when the request is not authenticated, 403
 * (`insufficient_scope`) when the user lacks a right. The body never says which right.
 */
export function requireRules (rules: RouteAuthRules): preHandlerAsyncHookHandler {
  return async function authorizeRequest (request) {
    const err = refusal(request, rules)
    if (err !== null) throw err
  }
}

/** requireRules as a callback-style hook: no promise per request on the routes the plugin guards. */
function rulesHook (rules: RouteAuthRules, onDenied?: AuthorizePluginOptions['onDenied']): preHandlerHookHandler {
  return function authorizeRequest (request, _reply, done) {
    done(refusal(request, rules, onDenied) ?? undefined)
  }
}

/** The user's `role` must be one of `roles`. */
export const requireRole = (...roles: string[]): preHandlerAsyncHookHandler => requireRules({ roles })
/** The user must hold every one of `permissions`. */
export const requirePermission = (...permissions: string[]): preHandlerAsyncHookHandler => requireRules({ permissions })
/** The token's scope must contain every one of `scopes`. */
export const requireScope = (...scopes: string[]): preHandlerAsyncHookHandler => requireRules({ scopes })

function checkRules (rules: unknown, route: string): RouteAuthRules {
  if (rules === null || typeof rules !== 'object' || Array.isArray(rules)) {
    throw new Error(`route ${route}: config.auth must be false or { roles?, permissions?, scopes? }`)
  }
  for (const [k, v] of Object.entries(rules)) {
    if (k !== 'roles' && k !== 'permissions' && k !== 'scopes') throw new Error(`route ${route}: config.auth.${k} is not a known rule (roles, permissions, scopes)`)
    if (!Array.isArray(v) || !v.every((x) => typeof x === 'string' && x !== '')) {
      throw new Error(`route ${route}: config.auth.${k} must be an array of non-empty strings`)
    }
  }
  return rules as RouteAuthRules
}

/**
 * Enforces each route's `config.auth` rules by appending a preHandler to the route, so it runs after
 * any authentication preHandler the route declares (`app.authenticate` with `global: false`).
 * Register before the routes it should cover (jwks-auth registers it for you); rules of routes declared
 * earlier are still enforced, by a preHandler, and never ignored.
 */
const authorize: FastifyPluginAsync<AuthorizePluginOptions> = async (app, opts) => {
  const onDenied = opts.onDenied
  if (app.hasDecorator('portcullisAuthorize')) return
  app.decorate('portcullisAuthorize', true)
  app.addHook('onRoute', (route: RouteOptions) => {
    const rules = route.config?.auth
    if (rules === undefined || rules === false) return
    const checked = checkRules(rules, `${String(route.method)} ${route.url}`)
    route.preHandler = [...hookList(route.preHandler), rulesHook(checked, onDenied)]
    // A fresh object: a config shared by several routes must not mark routes this hook never saw.
    const marked: FastifyContextConfig & { [ENFORCED]?: boolean } = { ...route.config, [ENFORCED]: true }
    route.config = marked
  })
  // A route declared before this plugin was registered never went through onRoute, yet the
  // authentication hook still covers it: enforce its rules here instead of silently ignoring them.
  // Callback style: this runs on every request and must cost nothing for routes already handled.
  app.addHook('preHandler', (request, _reply, done) => {
    const config = request.routeOptions.config as { auth?: unknown, [ENFORCED]?: boolean } | undefined
    const rules = config?.auth
    if (rules === undefined || rules === false || config?.[ENFORCED] === true) {
      done()
      return
    }
    let checked: RouteAuthRules
    try {
      checked = checkRules(rules, `${request.method} ${request.routeOptions.url ?? ''}`)
    } catch (err) {
      done(err as Error)
      return
    }
    done(refusal(request, checked, onDenied) ?? undefined)
  })
}

export default fp(authorize, { fastify: '5.x', name: 'portcullis-authorize' })
