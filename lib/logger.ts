import pino, { type Logger, type LoggerOptions } from 'pino'
import { BatchedDestination } from './log-destination.js'

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

/** Longest time a line of auth, rotation, the services or the CLI waits before it is written, in ms. */
export const LOG_FLUSH_INTERVAL = 50

/**
 * Where a process's log lines go: stdout (or `fd`), batched (BatchedDestination: one write(2) per
 * 32 KiB or LOG_FLUSH_INTERVAL, like the gateway's). Not pino's default asynchronous stdout: that
 * one flushes what it holds on exit with a loop that retries every write error, so a process whose
 * reader died (the stack that started it was SIGKILLed: EPIPE) never finished exiting. Nor a
 * synchronous one, which sleeps the event loop 100 ms at a time while a slow reader's pipe is full.
 * Here a dead reader's lines are dropped, a slow reader's held (up to 8 MiB, then dropped and
 * counted), and what is pending is written at exit once.
 */
export function logDestination (fd = 1): BatchedDestination {
  return new BatchedDestination({ fd, flushInterval: LOG_FLUSH_INTERVAL })
}

export function createLogger (name: string, level?: string): Logger {
  return pino(loggerOptions(name, level), logDestination())
}
