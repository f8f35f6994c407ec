import { TRACING_ENV_VARIABLES, TracingConfigError, tracingOptionsFromEnv, type TracingPluginOptions } from '@portcullis/tracing'
import type { Env, EnvGroup } from './env.js'
import { ConfigError } from './errors.js'

/** The standard OpenTelemetry variables every traced process (gateway, services) reads. */
export const TRACING_ENV: EnvGroup = {
  title: 'tracing',
  rows: TRACING_ENV_VARIABLES.map(([name, def, meaning]) => name === 'OTEL_SERVICE_NAME'
    ? [name, 'portcullis-gateway, <kind>-service', meaning] as const
    : [name, def, meaning] as const)
}

/**
 * @portcullis/tracing options from the OpenTelemetry variables (TRACING_ENV); `serviceName` is the
 * default `service.name` (OTEL_SERVICE_NAME wins). A value the plugin cannot use is a ConfigError
 * naming the variable.
 */
export function tracingFromEnv (env: Env, serviceName: string): TracingPluginOptions {
  try {
    return tracingOptionsFromEnv(env, serviceName)
  } catch (err) {
    if (err instanceof TracingConfigError) throw new ConfigError(err.variable, err.message.slice(err.variable.length + 2))
    throw err
  }
}
