import type { FastifyPluginAsync, FastifyRequest } from 'fastify'
import { NotFoundError, NotYoursError } from '../errors.js'
import { ProfileDirectory, type Profile } from './data.js'

const idParams = {
  type: 'object',
  properties: { id: { type: 'string', minLength: 1, maxLength: 200 } },
  required: ['id']
} as const

/**
 * user-service: `GET /users/me` (any valid token), `GET /users/:id` (self or admin), `GET /users`
 * (admin). Profiles live in memory and are created from the token on first sight.
 */
export const userService: FastifyPluginAsync = async (app) => {
  const directory = new ProfileDirectory()
  const me = (req: FastifyRequest): Profile => directory.upsertFromToken(req.user!.sub, req.user!.claims, req.user!.role)

  app.get('/users/me', async (req) => me(req))

  app.get<{ Params: { id: string } }>('/users/:id', { schema: { params: idParams } }, async (req) => {
    if (req.params.id === req.user!.sub) return me(req)
    if (req.user!.role !== 'admin') throw new NotYoursError('user')
    const p = directory.get(req.params.id)
    if (p === undefined) throw new NotFoundError('User')
    return p
  })

  app.get('/users', { config: { auth: { roles: ['admin'] } } }, async () => ({ users: directory.list() }))
}
