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

/**
 * Where a process's log lines go: stdout (or `fd`), written synchronously. Not pino's default
 * asynchronous stdout: that one flushes what it holds on exit with a loop that retries every write
 * error, so a process whose reader died (the stack that started it was SIGKILLed: EPIPE) never
 * finished exiting. Here a dead reader's EPIPE makes pino drop further lines, and a slow reader
 * (EAGAIN) holds the process back as any synchronous write would.
 */
export function logDestination (fd = 1): pino.DestinationStream {
  return pino.destination({ dest: fd, sync: true })
}

export function createLogger (name: string, level?: string): Logger {
  return pino(loggerOptions(name, level), logDestination())
}
