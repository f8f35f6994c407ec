import { SUPPORTED_ALGORITHMS } from '@portcullis/jwks-auth'

/** A duration string: seconds, or a number with a unit (also how config errors recognise a bad duration). */
export const DURATION_PATTERN = '^\\d+(\\.\\d+)?(ms|s|m|h|d)?$'

const duration = {
  description: 'seconds as a number, or a string with a unit: 250ms, 5s, 1m',
  anyOf: [
    { type: 'number', exclusiveMinimum: 0 },
    { type: 'string', pattern: DURATION_PATTERN }
  ]
} as const

const nonEmptyStrings = { type: 'array', items: { type: 'string', minLength: 1 }, uniqueItems: true } as const

const rateLimit = {
  anyOf: [
    { const: false },
    {
      type: 'object',
      additionalProperties: false,
      required: ['max'],
      properties: {
        max: { type: 'integer', minimum: 1 }, // 0 would refuse everything: `rateLimit: false` turns it off
        timeWindow: duration
      }
    }
  ]
} as const

const timeouts = {
  type: 'object',
  additionalProperties: false,
  properties: { connect: duration, headers: duration, body: duration }
} as const

/**
 * JSON Schema (draft-07, checked with Ajv at boot) of the gateway route file. The route-file
 * section of docs/configuration.md is generated from it (scripts/config-docs.ts refuses a key it
 * does not document).
 */
export const ROUTE_FILE_SCHEMA = {
  $schema: 'http://json-schema.org/draft-07/schema#',
  type: 'object',
  additionalProperties: false,
  required: ['routes'],
  properties: {
    issuers: {
      type: 'array',
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['issuer', 'audience'],
        properties: {
          issuer: { type: 'string', pattern: '^https?://' },
          jwksUri: { type: 'string', pattern: '^https?://' },
          audience: { anyOf: [{ type: 'string', minLength: 1 }, { ...nonEmptyStrings, minItems: 1 }] },
          algorithms: { type: 'array', minItems: 1, uniqueItems: true, items: { enum: SUPPORTED_ALGORITHMS } },
          revocations: { type: 'string', pattern: '^(https?://|redis$)' }
        }
      }
    },
    trustProxy: {
      description: 'false, true (trust every hop: only behind a proxy you control), a hop count, or addresses/CIDRs',
      anyOf: [
        { type: 'boolean' },
        { type: 'integer', minimum: 1 },
        { type: 'string', minLength: 1 },
        { ...nonEmptyStrings, minItems: 1 }
      ]
    },
    rateLimit,
    timeouts,
    breaker: {
      type: 'object',
      additionalProperties: false,
      properties: {
        failureThreshold: { type: 'integer', minimum: 1 },
        resetTimeout: duration
      }
    },
    routes: {
      type: 'array',
      minItems: 1,
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['prefix', 'upstream'],
        properties: {
          name: { type: 'string', pattern: '^[A-Za-z0-9_.-]{1,64}$' },
          prefix: { type: 'string', pattern: '^/([A-Za-z0-9._~-]+(/[A-Za-z0-9._~-]+)*)?$' },
          upstream: { type: 'string', pattern: '^https?://' },
          rewritePrefix: { type: 'string', pattern: '^/' },
          methods: {
            type: 'array',
            minItems: 1,
            uniqueItems: true,
            items: { enum: ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'] }
          },
          auth: { type: 'boolean' },
          roles: nonEmptyStrings,
          permissions: nonEmptyStrings,
          scopes: nonEmptyStrings,
          rateLimit,
          timeouts
        }
      }
    }
  }
} as const
