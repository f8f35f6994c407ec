import { randomUUID } from 'node:crypto'

export const REQUEST_ID_HEADER = 'x-request-id'

/**
 * An incoming `x-request-id` is kept only when it looks like an id: 1-128 characters of letters,
 * digits and `. _ : @ / + = -` (no spaces, quotes, commas or control bytes). The gateway and every
 * service use this one rule, so a request keeps one id end to end.
 */
export const REQUEST_ID_PATTERN = /^[A-Za-z0-9._:@/+=-]{1,128}$/

/** True when `value` is a request id a client may choose (see REQUEST_ID_PATTERN). */
export function isRequestId (value: unknown): value is string {
  return typeof value === 'string' && REQUEST_ID_PATTERN.test(value)
}

/** The incoming `x-request-id` when it is a well-formed id, else `fallback` when it is one, else a new UUID. */
export function requestIdOf (headers: Record<string, string | string[] | undefined>, fallback?: string): string {
  const incoming = headers[REQUEST_ID_HEADER]
  if (isRequestId(incoming)) return incoming
  return isRequestId(fallback) ? fallback : randomUUID()
}
