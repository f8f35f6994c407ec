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

/** Writes seconds as the largest whole unit: 30 -> `30s`, 900 -> `15m`, 604800 -> `7d`, 0.25 -> `250ms`. */
export function durationText (seconds: number): string {
  for (const [unit, size] of [['d', 86400], ['h', 3600], ['m', 60], ['s', 1]] as const) {
    if (seconds >= size && seconds % size === 0) return `${seconds / size}${unit}`
  }
  return seconds === 0 ? '0s' : `${Math.round(seconds * 1000)}ms`
}

/**
 * One environment variable as `--help` and docs/configuration.md show it: its name, its default as
 * shown (`unset` when there is none) and what it means.
 */
export type EnvRow = readonly [name: string, def: string, meaning: string]
export type EnvTable = readonly EnvRow[]

/** Variables several processes read (the store, key timings, JWKS verifier, logging): one table each. */
export interface EnvGroup {
  /** Lower-case title, e.g. `store`: `--help` shows `Environment (store):`, the docs a section. */
  readonly title: string
  readonly rows: EnvTable
}

/** Everything one process reads from its environment: its own table, then the shared groups it reads. */
export interface ProcessEnv {
  readonly own: EnvTable
  readonly shared: readonly EnvGroup[]
}

/** Every row of a process, each name once (a row shared by two of its groups is the same row). */
export function processEnvRows (p: ProcessEnv): EnvRow[] {
  const rows = new Map<string, EnvRow>()
  for (const row of [...p.own, ...p.shared.flatMap((g) => g.rows)]) {
    const seen = rows.get(row[0])
    if (seen !== undefined && seen !== row) throw new Error(`${row[0]} is defined twice: one variable, one row`)
    rows.set(row[0], row)
  }
  return [...rows.values()]
}

/** Width `--help` texts are wrapped at. */
export const HELP_WIDTH = 100

/**
 * Wraps `text` for `--help` at `width` columns, breaking at spaces; every line but the first is
 * indented by `indent` spaces (the first line is assumed to start at that column too).
 */
export function wrapHelp (text: string, indent: number, width = HELP_WIDTH): string {
  const lines: string[] = []
  let line = ''
  for (const word of text.split(' ')) {
    if (line !== '' && indent + line.length + 1 + word.length > width) {
      lines.push(line)
      line = word
    } else {
      line = line === '' ? word : `${line} ${word}`
    }
  }
  lines.push(line)
  return lines.join('\n' + ' '.repeat(indent))
}

/** Rows as `--help` lines: `  NAME  meaning (default X)`, the meaning wrapped under itself. */
function envRowsHelp (rows: EnvTable, nameWidth: number): string {
  return rows.map(([name, def, meaning]) => `  ${name.padEnd(nameWidth)} ${wrapHelp(`${meaning} (default ${def})`, 2 + nameWidth + 1)}`).join('\n')
}

/**
 * The Environment sections of a process's `--help`, rendered from its tables: `Environment:` with
 * its own rows, then `Environment (<group>):` for each shared group (a row already shown is not repeated).
 */
export function envHelp (p: ProcessEnv): string {
  const all = processEnvRows(p)
  const nameWidth = Math.max(22, ...all.map(([n]) => n.length))
  const shown = new Set<string>()
  const section = (title: string, rows: EnvTable): string => {
    const fresh = rows.filter(([n]) => !shown.has(n))
    for (const [n] of fresh) shown.add(n)
    return fresh.length === 0 ? '' : `${title}:\n${envRowsHelp(fresh, nameWidth)}`
  }
  return [section('Environment', p.own), ...p.shared.map((g) => section(`Environment (${g.title})`, g.rows))]
    .filter((s) => s !== '').join('\n')
}

/** pino's levels, the values of LOG_LEVEL. */
export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const
export type LogLevel = typeof LOG_LEVELS[number]

/** The logging group: read by every long-running process. */
export const LOG_ENV: EnvGroup = {
  title: 'logging',
  rows: [
    ['LOG_LEVEL', 'info', `pino level of the JSON log lines on stdout: ${LOG_LEVELS.join(', ')}`]
  ]
}

/** LOG_LEVEL, checked against pino's levels. */
export function logLevelFromEnv (env: Env, def: LogLevel = 'info'): LogLevel {
  return envEnum(env, 'LOG_LEVEL', LOG_LEVELS, def)
}
