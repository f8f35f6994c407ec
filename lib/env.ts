import { ConfigError } from './errors.js'

/**
 * Typed readers for environment variables. Each one throws a ConfigError naming the variable,
 * so a bad setting stops the boot with a one-line message instead of failing the first request.
 */
export type Env = Record<string, string | undefined>

function raw (env: Env, name: string): string | undefined {
  const v = env[name]
  if (v === undefined) return undefined
  const trimmed = v.trim()
  return trimmed === '' ? undefined : trimmed
}

export function envString (env: Env, name: string, def: string): string
export function envString (env: Env, name: string): string | undefined
export function envString (env: Env, name: string, def?: string): string | undefined {
  return raw(env, name) ?? def
}

export function envInt (env: Env, name: string, def: number, opts: { min?: number, max?: number } = {}): number {
  const v = raw(env, name)
  if (v === undefined) return def
  if (!/^-?\d+$/.test(v)) throw new ConfigError(name, `expected an integer, got "${v}"`)
  const n = Number(v)
  if (opts.min !== undefined && n < opts.min) throw new ConfigError(name, `must be >= ${opts.min}, got ${n}`)
  if (opts.max !== undefined && n > opts.max) throw new ConfigError(name, `must be <= ${opts.max}, got ${n}`)
  return n
}

export function envBool (env: Env, name: string, def: boolean): boolean {
  const v = raw(env, name)
  if (v === undefined) return def
  if (/^(1|true|yes|on)$/i.test(v)) return true
  if (/^(0|false|no|off)$/i.test(v)) return false
  throw new ConfigError(name, `expected true/false, got "${v}"`)
}

export function envEnum<T extends string> (env: Env, name: string, values: readonly T[], def: T): T {
  const v = raw(env, name)
  if (v === undefined) return def
  if (!(values as readonly string[]).includes(v)) {
    throw new ConfigError(name, `expected one of ${values.join(', ')}, got "${v}"`)
  }
  return v as T
}

export function envList (env: Env, name: string): string[] {
  const v = raw(env, name)
  if (v === undefined) return []
  return v.split(',').map((s) => s.trim()).filter((s) => s !== '')
}

const UNIT_SECONDS: Record<string, number> = { ms: 0.001, s: 1, m: 60, h: 3600, d: 86400 }

/** Parses a duration such as `900`, `900s`, `15m`, `1h`, `7d` or `250ms` into seconds. */
export function parseDuration (value: string): number | undefined {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$/.exec(value.trim())
  if (m === null) return undefined
  return Number(m[1]) * UNIT_SECONDS[m[2] ?? 's']!
}

/** Reads a duration env var (seconds by default, or with a unit: ms, s, m, h, d) and returns seconds. */
export function envDuration (env: Env, name: string, defSeconds: number, opts: { min?: number } = {}): number {
  const v = raw(env, name)
  if (v === undefined) return defSeconds
  const s = parseDuration(v)
  if (s === undefined) throw new ConfigError(name, `expected a duration such as 30s, 15m, 1h or 7d, got "${v}"`)
  if (opts.min !== undefined && s < opts.min) throw new ConfigError(name, `must be at least ${opts.min}s, got ${s}s`)
  return s
}

export function envUrl (env: Env, name: string, protocols: readonly string[]): URL | undefined {
  const v = raw(env, name)
  if (v === undefined) return undefined
  let u: URL
  try {
    u = new URL(v)
  } catch {
    throw new ConfigError(name, 'is not a valid URL')
  }
  if (!protocols.includes(u.protocol)) {
    throw new ConfigError(name, `expected a ${protocols.join(' or ')} URL, got ${u.protocol}`)
  }
  return u
}
