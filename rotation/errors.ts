import createError from '@fastify/error'

/** An unknown flag or argument on `portcullis rotation`. */
export const RotationUsageError = createError<[string]>('PORTCULLIS_ROTATION_USAGE', '%s')

/** The boot tick failed; the daemon does not start without a working store. */
export const RotationBootError = createError<[string]>('PORTCULLIS_ROTATION_BOOT', 'rotation worker cannot start: %s')
