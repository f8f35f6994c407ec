import type { FastifyPluginAsync } from 'fastify'
import { NotFoundError } from '../errors.js'
import { Catalog, type Product } from './data.js'

const productBody = {
  type: 'object',
  additionalProperties: false,
  properties: {
    name: { type: 'string', minLength: 1, maxLength: 200 },
    price: { type: 'integer', minimum: 0 },
    stock: { type: 'integer', minimum: 0, default: 0 }
  },
  required: ['name', 'price']
} as const

/**
 * product-service: `GET /products`, `GET /products/:id` (any valid token, users and service clients
 * alike), `POST /products` (permission `product:write`).
 */
export const productService: FastifyPluginAsync = async (app) => {
  const catalog = new Catalog()

  app.get('/products', async () => ({ products: catalog.list() }))

  app.get<{ Params: { id: string } }>('/products/:id', async (req) => {
    const p = catalog.get(req.params.id)
    if (p === undefined) throw new NotFoundError('Product')
    return p
  })

  app.post<{ Body: Omit<Product, 'id'> }>('/products', {
    schema: { body: productBody },
    config: { auth: { permissions: ['product:write'] } }
  }, async (req, reply) => {
    const p = catalog.add(req.body)
    req.log.info({ productId: p.id }, 'product created')
    return reply.code(201).send(p)
  })
}
