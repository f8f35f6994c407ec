import { writeFileSync } from 'node:fs'
import { stringify } from 'yaml'

export interface StackRouteOptions {
  issuer: string
  audience: string
  users: string
  orders: string
  products: string
  /** Requests per minute per caller (`sub`, else IP) on every route. @defaultValue 100 */
  rateLimitMax: number
  /** Requests per minute per caller on /api/products, low so the walkthrough can show a 429. */
  productsRateLimitMax: number
}

/** The default route table of `portcullis start`: `/api/<name>` to each example service. */
export function stackRouteFile (o: StackRouteOptions): Record<string, unknown> {
  return {
    // the auth service's revocation feed: logouts and revoked users, tokens and keys refused in about a second
    issuers: [{ issuer: o.issuer, audience: o.audience, revocations: `${o.issuer}/auth/revocations` }],
    rateLimit: { max: o.rateLimitMax, timeWindow: '1m' },
    routes: [
      { name: 'users', prefix: '/api/users', upstream: o.users, rewritePrefix: '/users' },
      { name: 'orders', prefix: '/api/orders', upstream: o.orders, rewritePrefix: '/orders' },
      {
        name: 'products',
        prefix: '/api/products',
        upstream: o.products,
        rewritePrefix: '/products',
        rateLimit: { max: o.productsRateLimitMax, timeWindow: '1m' }
      }
    ]
  }
}

export function writeStackRouteFile (path: string, o: StackRouteOptions): void {
  const header = '# Written by `portcullis start` on every start. To use your own routes, copy this file and\n' +
    '# point GATEWAY_CONFIG at the copy.\n'
  writeFileSync(path, header + stringify(stackRouteFile(o)))
}
