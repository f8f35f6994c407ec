import t from 'tap'
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, realpathSync, rmSync, utimesSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { spawnSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
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

/**
 * The environment for an npm command run by a test: no npm_* variables of an enclosing `npm test`,
 * a cache of its own (the first npx run in a checkout links it into the npx cache), no registry
 * (`offline`: anything that would be fetched fails instead) and no lifecycle scripts (npm would run
 * the checkout's `prepare`, a rebuild of dist/, under the other tests).
 */
function npmEnv (root: string, extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^npm_/i.test(k)))
  return {
    ...env,
    npm_config_cache: join(root, 'npm-cache'),
    npm_config_offline: 'true',
    npm_config_ignore_scripts: 'true',
    npm_config_update_notifier: 'false',
    npm_config_fund: 'false',
    npm_config_audit: 'false',
    ...extra
  }
}

const REPO = fileURLToPath(new URL('..', import.meta.url))

t.test('README: after npm ci, `npx portcullis` in the checkout runs the checkout\'s own command, nothing from the registry', async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'portcullis-npx-'))
  t.teardown(() => rmSync(root, { recursive: true, force: true }))
  const { version } = JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')) as { version: string }
  const npx = (args: string[], cwd: string): ReturnType<typeof spawnSync> => spawnSync('npx', args, { cwd, env: npmEnv(root), encoding: 'utf8', timeout: 120_000 })
  const v = npx(['portcullis', '--version'], REPO)
  t.equal(v.status, 0, String(v.stderr))
  t.equal(String(v.stdout).trim(), version, 'npx portcullis --version')
  const below = npx(['portcullis', '--help'], join(REPO, 'docs'))
  t.equal(below.status, 0, String(below.stderr))
  t.match(String(below.stdout), /^Usage: portcullis <command>/, 'from a folder below the checkout too')
  // What npx installed: a link to this checkout and its bin, nothing fetched.
  const [dir] = readdirSync(join(root, 'npm-cache', '_npx'))
  const modules = join(root, 'npm-cache', '_npx', dir!, 'node_modules')
  t.same(readdirSync(modules).filter((f) => !f.startsWith('.')), ['portcullis'], 'one package in the npx cache')
  t.equal(realpathSync(join(modules, 'portcullis')), realpathSync(REPO), 'a link to the checkout')
  // Outside the checkout npx would ask the registry instead: the README says to use the linked command there.
  const outside = npx(['--no-install', 'portcullis', '--version'], root)
  t.not(outside.status, 0, 'outside the checkout npx does not find it (offline: the registry look-up fails)')
  t.notMatch(String(outside.stdout), version)
})

t.test('README: `npm link` puts `portcullis` on the PATH, this checkout\'s command in any folder', async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'portcullis-link-'))
  t.teardown(() => rmSync(root, { recursive: true, force: true }))
  const prefix = join(root, 'prefix')
  const link = spawnSync('npm', ['link'], { cwd: REPO, env: npmEnv(root, { npm_config_prefix: prefix }), encoding: 'utf8', timeout: 120_000 })
  t.equal(link.status, 0, String(link.stderr))
  t.equal(realpathSync(join(prefix, 'lib', 'node_modules', 'portcullis')), realpathSync(REPO), 'the global package is this checkout')
  const elsewhere = join(root, 'elsewhere')
  mkdirSync(elsewhere)
  const env = { ...npmEnv(root), PATH: `${join(prefix, 'bin')}:${process.env.PATH ?? ''}`, PORTCULLIS_DATA_DIR: '', DATABASE_URL: '' }
  const v = spawnSync('portcullis', ['--version'], { cwd: elsewhere, env, encoding: 'utf8' })
  const { version } = JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')) as { version: string }
  t.equal(v.stdout.trim(), version, 'portcullis --version')
  const list = spawnSync('portcullis', ['users', 'list'], { cwd: elsewhere, env, encoding: 'utf8', timeout: 60_000 })
  t.equal(list.status, 1)
  t.match(list.stderr, `no store at ${realpathSync(elsewhere)}/data/portcullis.db`, 'it acts on the folder it runs in')
})
