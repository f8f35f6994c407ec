// Which entry point bin/portcullis.js runs: the compiled CLI in dist/ when it is at least as new as
// every source file the build compiles (or copies), else the TypeScript sources through tsx.
import { existsSync, readdirSync, statSync } from 'node:fs'
import { join } from 'node:path'

export const SOURCE_DIRS = ['cli', 'gateway', 'plugins', 'lib', 'store', 'auth', 'rotation', 'services']
/** Build output and installed packages inside the source folders (plugins/<name>/dist, node_modules). */
const SKIPPED = new Set(['dist', 'node_modules'])

/** Newest modification time (ms) of the sources under `root`, or Infinity when one cannot be read. */
export function newestSource (root) {
  let newest = 0
  const walk = (dir) => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = join(dir, e.name)
      if (e.isDirectory()) { if (!SKIPPED.has(e.name)) walk(p) }
      else if (e.name.endsWith('.ts') || e.name.endsWith('.yaml')) newest = Math.max(newest, statSync(p).mtimeMs)
    }
  }
  try {
    for (const d of SOURCE_DIRS) if (existsSync(join(root, d))) walk(join(root, d))
  } catch {
    return Infinity
  }
  return newest
}

/** `{ kind: 'compiled', path }` or `{ kind: 'sources', path }` for the checkout at `root`. */
export function chooseEntry (root, env = process.env) {
  const compiled = join(root, 'dist/cli/portcullis.js')
  if (env.PORTCULLIS_TSX !== '1' && existsSync(compiled) && statSync(compiled).mtimeMs >= newestSource(root)) {
    return { kind: 'compiled', path: compiled }
  }
  return { kind: 'sources', path: join(root, 'cli/portcullis.ts') }
}
