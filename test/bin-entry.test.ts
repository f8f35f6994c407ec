import t from 'tap'
import { mkdirSync, mkdtempSync, rmSync, utimesSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { spawnSync } from 'node:child_process'
// @ts-expect-error plain JavaScript module without types
import { chooseEntry } from '../bin/entry.js'

type Entry = { kind: 'compiled' | 'sources', path: string }
const choose = chooseEntry as (root: string, env?: Record<string, string>) => Entry

t.test('bin/portcullis.js runs dist/ only when it is at least as new as every source', async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'portcullis-bin-'))
  t.teardown(() => rmSync(root, { recursive: true, force: true }))
  mkdirSync(join(root, 'gateway'), { recursive: true })
  mkdirSync(join(root, 'cli'), { recursive: true })
  const at = (p: string, s: number): void => { writeFileSync(join(root, p), ''); utimesSync(join(root, p), s, s) }
  at('gateway/server.ts', 1000)
  at('cli/portcullis.ts', 1000)
  t.equal(choose(root).kind, 'sources', 'no build: the sources')
  mkdirSync(join(root, 'dist/cli'), { recursive: true })
  at('dist/cli/portcullis.js', 2000)
  t.same(choose(root), { kind: 'compiled', path: join(root, 'dist/cli/portcullis.js') }, 'a fresh build is used')
  t.equal(choose(root, { PORTCULLIS_TSX: '1' }).kind, 'sources', 'PORTCULLIS_TSX=1 forces the sources')
  at('gateway/server.ts', 3000)
  t.equal(choose(root).kind, 'sources', 'a source edited after the build: the sources, never a stale build')
  at('dist/cli/portcullis.js', 3000)
  at('gateway/routes.example.yaml', 4000)
  t.equal(choose(root).kind, 'sources', 'a copied asset (yaml) counts too')
  at('dist/cli/portcullis.js', 5000)
  mkdirSync(join(root, 'plugins/jwks-auth/src'), { recursive: true })
  mkdirSync(join(root, 'plugins/jwks-auth/dist'), { recursive: true })
  at('plugins/jwks-auth/dist/index.d.ts', 6000)
  t.equal(choose(root).kind, 'compiled', "a plugin package's own build output (dist/*.d.ts) is not a source")
  at('plugins/jwks-auth/src/verify.ts', 6000)
  t.equal(choose(root).kind, 'sources', 'a plugin package source edited after the build: the sources')
})

t.test('portcullis --version prints the package version', async (t) => {
  const { version } = JSON.parse((await import('node:fs')).readFileSync('package.json', 'utf8')) as { version: string }
  for (const flag of ['--version', '-v']) {
    const r = spawnSync(process.execPath, ['bin/portcullis.js', flag], { encoding: 'utf8' })
    t.equal(r.status, 0)
    t.equal(r.stdout.trim(), version, flag)
  }
})

t.test('bin/portcullis.js answers --help both ways', async (t) => {
  for (const env of [{}, { PORTCULLIS_TSX: '1' }]) {
    const r = spawnSync(process.execPath, ['bin/portcullis.js', 'gateway', '--help'], { env: { ...process.env, ...env }, encoding: 'utf8' })
    t.equal(r.status, 0, `exit 0 (${JSON.stringify(env)})`)
    t.match(r.stdout, /Usage: portcullis gateway/)
    t.match(r.stdout, /JWKS_TOKEN_CACHE_MAX/)
  }
})
