import createError from '@fastify/error'

/** Errors of the user and client stores (store/users.ts, store/clients.ts). */
export const InvalidAccountError = createError<[string]>('PORTCULLIS_INVALID_ACCOUNT', '%s', 400)
export const AccountExistsError = createError<[string]>('PORTCULLIS_ACCOUNT_EXISTS', '%s already exists', 409)
