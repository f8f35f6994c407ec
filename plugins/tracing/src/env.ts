import { SAMPLER_NAMES, type SamplerName } from './provider.js'
import type { TracingPluginOptions } from './index.js'

/** A standard OpenTelemetry variable with a value the plugin cannot use; `variable` names it. */
export class TracingConfigError extends Error {
  constructor (readonly variable: string, problem: string) {
    super(`${variable}: ${problem}`)
    this.name = 'TracingConfigError'
  }
}

/** The OpenTelemetry variables `tracingOptionsFromEnv` reads, with what each does. */
export const TRACING_ENV_VARIABLES = [
  ['OTEL_EXPORTER_OTLP_ENDPOINT', 'unset', 'OTLP/HTTP collector base URL: spans go to `<url>/v1/traces`; unset (and no OTEL_EXPORTER_OTLP_TRACES_ENDPOINT): no span is exported, the trace context is still accepted or started, passed on and logged'],
  ['OTEL_EXPORTER_OTLP_TRACES_ENDPOINT', 'unset', 'full OTLP/HTTP traces URL; wins over OTEL_EXPORTER_OTLP_ENDPOINT'],
  ['OTEL_EXPORTER_OTLP_HEADERS', 'unset', 'headers sent with each export (an API key, say): `key=value` pairs separated by commas, values URL-encoded; never logged'],
  ['OTEL_SERVICE_NAME', '<the process>', '`service.name` of the exported spans'],
  ['OTEL_TRACES_SAMPLER', 'parentbased_always_on', `sampler: ${SAMPLER_NAMES.join(', ')}`],
  ['OTEL_TRACES_SAMPLER_ARG', '1', 'ratio of the traceidratio samplers, 0 to 1'],
  ['OTEL_TRACES_EXPORTER', 'otlp', '`none` exports nothing whatever the endpoint'],
  ['OTEL_SDK_DISABLED', 'false', '`true` exports nothing whatever the endpoint'],
  ['OTEL_BSP_SCHEDULE_DELAY', '5000', 'longest wait in ms before ended spans are sent in a batch']
] as const

function value (env: Record<string, string | undefined>, name: string): string | undefined {
  const v = env[name]?.trim()
  return v === undefined || v === '' ? undefined : v
}

function httpUrl (name: string, v: string): URL {
  let u: URL
  try {
    u = new URL(v)
  } catch {
    throw new TracingConfigError(name, `is not a valid URL: "${v}"`)
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new TracingConfigError(name, `expected an http or https URL, got ${u.protocol}`)
  return u
}

const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/

/** `key=value,key2=value2` (values URL-encoded, as the OpenTelemetry spec writes them). */
function parseHeaders (text: string): Record<string, string> {
  const out: Record<string, string> = {}
  for (const pair of text.split(',')) {
    if (pair.trim() === '') continue
    const eq = pair.indexOf('=')
    const key = eq === -1 ? '' : pair.slice(0, eq).trim()
    // the value is not echoed: it may be a credential
    if (!TOKEN.test(key)) throw new TracingConfigError('OTEL_EXPORTER_OTLP_HEADERS', 'expected key=value pairs separated by commas, with header names as keys')
    let v: string
    try {
      v = decodeURIComponent(pair.slice(eq + 1).trim())
    } catch {
      throw new TracingConfigError('OTEL_EXPORTER_OTLP_HEADERS', `the value of "${key}" is not valid URL encoding`)
    }
    if (/[\r\n\0]/.test(v)) throw new TracingConfigError('OTEL_EXPORTER_OTLP_HEADERS', `the value of "${key}" holds a line break`)
    out[key.toLowerCase()] = v
  }
  return out
}

/**
 * Plugin options from the standard OpenTelemetry variables (TRACING_ENV_VARIABLES). Throws a
 * TracingConfigError naming the variable when a value cannot be used: a process stops at boot
 * instead of running without the traces it was told to send.
 */
export function tracingOptionsFromEnv (env: Record<string, string | undefined> = process.env, defaultServiceName?: string): TracingPluginOptions {
  const sampler = value(env, 'OTEL_TRACES_SAMPLER')
  if (sampler !== undefined && !(SAMPLER_NAMES as readonly string[]).includes(sampler)) {
    throw new TracingConfigError('OTEL_TRACES_SAMPLER', `expected one of ${SAMPLER_NAMES.join(', ')}, got "${sampler}"`)
  }
  const arg = value(env, 'OTEL_TRACES_SAMPLER_ARG')
  const ratio = arg === undefined ? undefined : Number(arg)
  if (ratio !== undefined && (!Number.isFinite(ratio) || ratio < 0 || ratio > 1)) {
    throw new TracingConfigError('OTEL_TRACES_SAMPLER_ARG', `expected a ratio from 0 to 1, got "${arg}"`)
  }
  const delayText = value(env, 'OTEL_BSP_SCHEDULE_DELAY')
  const delay = delayText === undefined ? undefined : Number(delayText)
  if (delay !== undefined && (!Number.isInteger(delay) || delay < 1)) {
    throw new TracingConfigError('OTEL_BSP_SCHEDULE_DELAY', `expected a positive whole number of milliseconds, got "${delayText}"`)
  }
  const exporter = value(env, 'OTEL_TRACES_EXPORTER')
  if (exporter !== undefined && exporter !== 'otlp' && exporter !== 'none') {
    throw new TracingConfigError('OTEL_TRACES_EXPORTER', `expected otlp or none, got "${exporter}"`)
  }
  const disabledText = value(env, 'OTEL_SDK_DISABLED')
  if (disabledText !== undefined && !/^(true|false)$/i.test(disabledText)) {
    throw new TracingConfigError('OTEL_SDK_DISABLED', `expected true or false, got "${disabledText}"`)
  }
  const traces = value(env, 'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT')
  const base = value(env, 'OTEL_EXPORTER_OTLP_ENDPOINT')
  let exportUrl: string | undefined
  if (traces !== undefined) {
    exportUrl = httpUrl('OTEL_EXPORTER_OTLP_TRACES_ENDPOINT', traces).href
  } else if (base !== undefined) {
    const u = httpUrl('OTEL_EXPORTER_OTLP_ENDPOINT', base)
    exportUrl = `${u.href.replace(/\/$/, '')}/v1/traces`
  }
  if (exporter === 'none' || disabledText?.toLowerCase() === 'true') exportUrl = undefined
  const headersText = value(env, 'OTEL_EXPORTER_OTLP_HEADERS')
  const exportHeaders = headersText === undefined ? undefined : parseHeaders(headersText)
  const serviceName = value(env, 'OTEL_SERVICE_NAME') ?? defaultServiceName
  return {
    ...(exportUrl !== undefined ? { exportUrl } : {}),
    ...(exportUrl !== undefined && exportHeaders !== undefined ? { exportHeaders } : {}),
    ...(serviceName !== undefined ? { serviceName } : {}),
    ...(sampler !== undefined ? { sampler: sampler as SamplerName } : {}),
    ...(ratio !== undefined ? { samplerRatio: ratio } : {}),
    ...(delay !== undefined ? { scheduledDelayMillis: delay } : {})
  }
}
