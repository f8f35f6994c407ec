// `npm run build` (also run by `npm ci` / `npm install` through `prepare`): compiles every plugin
// package to its dist/ (in dependency order: each one's .d.ts is what the next one compiles
// against), then the processes and the CLI to dist/, and copies the files the compiled code reads.
import { spawnSync } from 'node:child_process'
import { copyFileSync, mkdirSync, rmSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = fileURLToPath(new URL('..', import.meta.url))
/** Plugin packages, each after the packages it depends on. */
export const PACKAGES = ['core', 'authorize', 'metrics', 'jwks-auth', 'rate-limit', 'propagation', 'tracing']
const ASSETS = ['gateway/routes.example.yaml']
const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc')

function compile (project, what) {
  const r = spawnSync(process.execPath, [tsc, '-p', project], { stdio: 'inherit' })
  if (r.status !== 0) {
    console.error(`build: tsc failed for ${what}`)
    process.exit(r.status ?? 1)
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  for (const p of PACKAGES) {
    const dir = join(root, 'plugins', p)
    rmSync(join(dir, 'dist'), { recursive: true, force: true }) // no output of a deleted source left behind
    compile(join(dir, 'tsconfig.json'), `@portcullis/${p}`)
  }
  rmSync(join(root, 'dist'), { recursive: true, force: true })
  compile(join(root, 'tsconfig.build.json'), 'the processes and the CLI')
  for (const a of ASSETS) {
    mkdirSync(dirname(join(root, 'dist', a)), { recursive: true })
    copyFileSync(join(root, a), join(root, 'dist', a))
  }
}
