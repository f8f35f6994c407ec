// `npm run build`: compiles to dist/ and copies the files the compiled code reads at run time.
import { spawnSync } from 'node:child_process'
import { copyFileSync, mkdirSync, rmSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = fileURLToPath(new URL('..', import.meta.url))
const ASSETS = ['gateway/routes.example.yaml']

rmSync(join(root, 'dist'), { recursive: true, force: true }) // no output of a deleted source left behind
const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc')
const r = spawnSync(process.execPath, [tsc, '-p', join(root, 'tsconfig.build.json')], { stdio: 'inherit' })
if (r.status !== 0) {
  console.error('build: tsc failed')
  process.exit(r.status ?? 1)
}
for (const a of ASSETS) {
  mkdirSync(dirname(join(root, 'dist', a)), { recursive: true })
  copyFileSync(join(root, a), join(root, 'dist', a))
}
