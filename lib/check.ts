import { processEnvRows, type Env, type ProcessEnv } from './env.js'

/**
 * `--check`: every problem of a process's settings, found without starting it. Each check runs on
 * its own, so one bad setting does not hide the next.
 */

/** The message of an error (a ConfigError names its setting: "Invalid configuration: NAME: reason"). */
function problemOf (err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}

/**
 * Reads each set variable of `names` on its own through `read` (which throws a ConfigError for a bad
 * value), so that every bad variable is reported, not only the first. Variables that are only valid
 * together (`together`: a certificate and its key) are read together.
 */
export function envProblems (env: Env, names: readonly string[], read: (env: Env) => unknown, together: ReadonlyArray<readonly string[]> = []): string[] {
  const problems = new Set<string>()
  try {
    read(env)
    return []
  } catch (err) {
    problems.add(problemOf(err))
  }
  for (const name of names) {
    if (env[name] === undefined) continue
    const group = together.find((g) => g.includes(name)) ?? [name]
    const alone: Env = {}
    for (const n of group) if (env[n] !== undefined) alone[n] = env[n]
    try {
      read(alone)
    } catch (err) {
      problems.add(problemOf(err))
    }
  }
  return [...problems]
}

/** Runs each check in turn and collects what they throw. */
export async function checkProblems (checks: ReadonlyArray<() => unknown>): Promise<string[]> {
  const problems: string[] = []
  for (const check of checks) {
    try {
      await check()
    } catch (err) {
      problems.push(problemOf(err))
    }
  }
  return problems
}

/** Prints `ok` (stdout, exit code 0) or each problem on a line of its own (stderr, exit code 1). */
export function reportCheck (what: string, problems: readonly string[], out: (line: string) => void = (l) => { process.stdout.write(`${l}\n`) }, err: (line: string) => void = (l) => { process.stderr.write(`${l}\n`) }): number {
  if (problems.length === 0) {
    out('ok')
    return 0
  }
  err(`${what}: ${problems.length} problem${problems.length === 1 ? '' : 's'}`)
  for (const p of problems) err(`  ${p}`)
  return 1
}

/** The problems of a process's environment as its start would find them: each variable of `table` read on its own through `read`. */
export function processEnvProblems (env: Env, table: ProcessEnv, read: (env: Env) => unknown): string[] {
  return envProblems(env, processEnvRows(table).map(([name]) => name), read)
}
