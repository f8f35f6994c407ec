import createError from '@fastify/error'

/** The caller is authenticated but may not see this resource (someone else's order or profile). */
export const NotYoursError = createError('PORTCULLIS_SERVICE_FORBIDDEN', 'Not allowed to access this %s', 403)
export const NotFoundError = createError('PORTCULLIS_SERVICE_NOT_FOUND', '%s not found', 404)
/** An order names a product the product service does not know, or an inactive user places it. */
export const OrderRejectedError = createError('PORTCULLIS_ORDER_REJECTED', 'Order rejected: %s', 422)
/** Another service refused the caller's token although this one accepted it. */
export const UpstreamRefusedError = createError('PORTCULLIS_UPSTREAM_REFUSED', 'A downstream service refused the request', 502)
