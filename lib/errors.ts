import createError from '@fastify/error'

/** A setting (env var, flag or config-file entry) is missing or invalid. Always names the setting. */
export const ConfigError = createError<[string, string]>(
  'PORTCULLIS_CONFIG',
  'Invalid configuration: %s: %s'
)

/** Thrown by a command-line tool for a user mistake: printed as one line, exit code 1. */
export const UsageError = createError<[string]>('PORTCULLIS_USAGE', '%s')

export function isConfigError (err: unknown): err is Error & { code: string } {
  return err instanceof Error && (err as { code?: string }).code === 'PORTCULLIS_CONFIG'
}
