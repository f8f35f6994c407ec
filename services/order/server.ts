import type { FastifyPluginAsync } from 'fastify'
import { currentContext, type ServiceResponse } from '@portcullis/propagation'
import type { ServiceConfig } from '../config.js'
import { NotFoundError, NotYoursError, OrderRejectedError, UpstreamRefusedError } from '../errors.js'
import { OrderBook } from './data.js'

interface ProductView { id: string, name: string, price: number, stock: number }
interface UserView { id: string, active: boolean }
interface NewOrder { items: Array<{ productId: string, quantity: number }> }

const orderBody = {
  type: 'object',
  additionalProperties: false,
  properties: {
    items: {
      type: 'array',
      minItems: 1,
      maxItems: 20,
      items: {
        type: 'object',
        additionalProperties: false,
        properties: {
          productId: { type: 'string', minLength: 1, maxLength: 100, pattern: '^[A-Za-z0-9_-]+$' },
          quantity: { type: 'integer', minimum: 1, maximum: 1000 }
        },
        required: ['productId', 'quantity']
      }
    }
  },
  required: ['items']
} as const

/** A 401/403 from a service we called with the caller's own (already verified) token. */
function refused (res: ServiceResponse): boolean {
  return res.status === 401 || res.status === 403
}

export interface OrderServiceOptions { config: ServiceConfig }

/**
 * order-service: `GET /orders` (own orders; admin sees all) and `GET /orders/:id`, both with the
 * permission `order:read`, and `POST /orders`
 * (permission `order:create`), which checks the caller with user-service and every product with
 * product-service, calling both with the caller's token and request id. With its own client
 * (SERVICE_CLIENT_ID) it also refreshes a product catalog in the background, as itself.
 */
export const orderService: FastifyPluginAsync<OrderServiceOptions> = async (app, { config }) => {
  const orders = new OrderBook()
  const users = app.serviceClient(config.userServiceUrl)
  const products = app.serviceClient(config.productServiceUrl)
  const isAdmin = (role: string | undefined): boolean => role === 'admin'

  app.get('/orders', { config: { auth: { permissions: ['order:read'] } } }, async (req) => ({
    orders: orders.list(isAdmin(req.user!.role) ? undefined : req.user!.sub)
  }))

  app.get<{ Params: { id: string } }>('/orders/:id', { config: { auth: { permissions: ['order:read'] } } }, async (req) => {
    const o = orders.get(req.params.id)
    if (o === undefined) throw new NotFoundError('Order')
    if (o.sub !== req.user!.sub && !isAdmin(req.user!.role)) throw new NotYoursError('order')
    return o
  })

  app.post<{ Body: NewOrder }>('/orders', {
    schema: { body: orderBody },
    config: { auth: { permissions: ['order:create'] } }
  }, async (req, reply) => {
    const [user, ...found] = await Promise.all([
      users.get<UserView>('/users/me'),
      ...req.body.items.map((i) => products.get<ProductView>(`/products/${encodeURIComponent(i.productId)}`))
    ])
    if (refused(user!) || found.some(refused)) throw new UpstreamRefusedError()
    if (user!.status !== 200) throw new UpstreamRefusedError()
    if (!user!.body.active) throw new OrderRejectedError('the user is not active')
    const items = req.body.items.map((item, i) => {
      const res = found[i]!
      if (res.status === 404) throw new OrderRejectedError(`unknown product ${item.productId}`)
      if (res.status !== 200) throw new UpstreamRefusedError()
      return { productId: item.productId, name: res.body.name, quantity: item.quantity, unitPrice: res.body.price }
    })
    const order = orders.add({ sub: req.user!.sub, items, requestId: currentContext()!.requestId })
    req.log.info({ orderId: order.id, sub: order.sub, total: order.total }, 'order created')
    return reply.code(201).send(order)
  })

  // Background work: no request context, so the client sends the service's own token.
  const catalog = { products: 0, refreshedAt: null as string | null, lastError: null as string | null }
  app.get('/orders/catalog-status', { config: { auth: false }, logLevel: 'warn' }, async () => catalog)
  if (config.client !== undefined && config.catalogRefresh > 0) {
    const refresh = async (): Promise<void> => {
      try {
        const res = await products.get<{ products: ProductView[] }>('/products')
        if (res.status !== 200) throw new Error(`product-service answered ${res.status}`)
        catalog.products = res.body.products.length
        catalog.refreshedAt = new Date().toISOString()
        catalog.lastError = null
        app.log.info({ products: catalog.products }, 'catalog refreshed with the service token')
      } catch (err) {
        catalog.lastError = err instanceof Error ? err.message : String(err)
        app.log.warn({ err }, 'catalog refresh failed')
      }
    }
    let timer: NodeJS.Timeout | undefined
    app.addHook('onListen', async () => {
      void refresh()
      timer = setInterval(() => { void refresh() }, config.catalogRefresh * 1000).unref()
    })
    app.addHook('onClose', async () => { clearInterval(timer) })
  }
}
