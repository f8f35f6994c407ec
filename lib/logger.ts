import pino, { type Logger, type LoggerOptions } from 'pino'

/** Paths whose values never reach a log line: credentials, tokens, cookies, key material. */
export const REDACT_PATHS = [
  'req.headers.authorization',
  'req.headers.cookie',
  'req.headers["proxy-authorization"]',
  'res.headers["set-cookie"]',
  'headers.authorization',
  'headers.cookie',
  'password',
  '*.password',
  'token',
  '*.token',
  'access_token',
  '*.access_token',
  'refresh_token',
  '*.refresh_token',
  'client_secret',
  '*.client_secret',
  'secret',
  '*.secret',
  'privateKey',
  '*.privateKey'
]

export function loggerOptions (name: string, level = process.env.LOG_LEVEL ?? 'info'): LoggerOptions {
  return {
    name,
    level,
    redact: { paths: REDACT_PATHS, censor: '[redacted]' }
  }
}

export function createLogger (name: string, level?: string): Logger {
  return pino(loggerOptions(name, level))
}
