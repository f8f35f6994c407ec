import { spawnSync } from 'node:child_process'
import { mkdtempSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

export const ROOT = fileURLToPath(new URL('..', import.meta.url))

/**
 * Compiles bench/gateway-target.ts (and what it imports) to JavaScript in a new temporary directory
 * and returns it; the caller removes it. The processes under test run compiled JavaScript (what
 * `npm run build` produces), not tsx: tsx's module hooks run in a worker thread with its own V8 heap
 * (~70 MB of RSS) and its own work, which would be measured as the gateway's.
 */
export function compileTargets (): string {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-bench-'))
  writeFileSync(join(dir, 'package.json'), '{"type":"module"}')
  symlinkSync(join(ROOT, 'node_modules'), join(dir, 'node_modules'))
  writeFileSync(join(dir, 'tsconfig.json'), JSON.stringify({
    extends: join(ROOT, 'tsconfig.json'),
    compilerOptions: { noEmit: false, outDir: dir, rootDir: ROOT, declaration: false, sourceMap: false },
    include: [],
    files: [join(ROOT, 'bench/gateway-target.ts')]
  }))
  // type errors elsewhere in the checkout do not stop the emit
  spawnSync(process.execPath, [join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', join(dir, 'tsconfig.json')], { stdio: 'ignore' })
  return dir
}
