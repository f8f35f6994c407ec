import { readFileSync, readdirSync } from 'node:fs'
import { builtinModules } from 'node:module'
import { join } from 'node:path'
import t from 'tap'

// Each plugin package declares exactly what its sources import: a user installing it gets every
// module it loads and nothing it does not (no database, cache or build-tool client by accident).
const ROOT = join(import.meta.dirname, '..')
const PACKAGES = readdirSync(join(ROOT, 'plugins')).sort()
const IMPORT = /(?:^|\n)\s*(import|export)\s+(type\s+)?(?:[^'"]*?\sfrom\s+)?['"]([^'"]+)['"]|import\(\s*['"]([^'"]+)['"]\s*\)/g

interface Manifest {
  name: string
  dependencies?: Record<string, string>
  peerDependencies?: Record<string, string>
  peerDependenciesMeta?: Record<string, { optional?: boolean }>
}

/** Package names imported by a package's sources: `value` (loaded at run time) and `types` (type-only). */
function importsOf (pkg: string): { value: Set<string>, types: Set<string> } {
  const dir = join(ROOT, 'plugins', pkg, 'src')
  const value = new Set<string>()
  const types = new Set<string>()
  for (const f of readdirSync(dir).filter((n) => n.endsWith('.ts'))) {
    const text = readFileSync(join(dir, f), 'utf8')
    for (const m of text.matchAll(IMPORT)) {
      const spec = m[3] ?? m[4]!
      if (spec.startsWith('.') || spec.startsWith('node:') || builtinModules.includes(spec)) continue
      const name = spec.startsWith('@') ? spec.split('/').slice(0, 2).join('/') : spec.split('/')[0]!
      const typeOnly = m[2] !== undefined || /^import\s+type\s*\{\s*\}/.test(m[0].trim())
      ;(typeOnly ? types : value).add(name)
    }
  }
  for (const v of value) types.delete(v)
  return { value, types }
}

for (const pkg of PACKAGES) {
  t.test(`@portcullis/${pkg}: dependencies match what its sources import`, async (t) => {
    const manifest = JSON.parse(readFileSync(join(ROOT, 'plugins', pkg, 'package.json'), 'utf8')) as Manifest
    t.equal(manifest.name, `@portcullis/${pkg}`)
    const { value, types } = importsOf(pkg)
    const deps = new Set(Object.keys(manifest.dependencies ?? {}))
    const peers = new Set(Object.keys(manifest.peerDependencies ?? {}))
    const optional = new Set(Object.entries(manifest.peerDependenciesMeta ?? {}).filter(([, m]) => m.optional === true).map(([n]) => n))
    t.ok(peers.has('fastify'), 'fastify is a peer dependency')
    t.notOk(deps.has('fastify'), 'never a dependency: the app brings its own Fastify')
    for (const name of value) {
      t.ok(deps.has(name) || peers.has(name), `${name} (imported) is declared`)
    }
    for (const name of types) {
      // a type-only import is erased: it needs no install unless the shipped .d.ts names it
      t.ok(name === 'fastify' || deps.has(name) || peers.has(name), `${name} (types) is declared`)
    }
    for (const name of deps) t.ok(value.has(name) || types.has(name), `${name} (dependency) is imported by the sources`)
    for (const name of peers) {
      if (name !== 'fastify') t.ok(optional.has(name), `${name} is an optional peer (loaded only when configured)`)
    }
    for (const heavy of ['better-sqlite3', 'pg', 'ioredis', 'tsx', 'esbuild', 'typescript']) {
      t.notOk(deps.has(heavy), `${heavy} is not a dependency`)
    }
  })
}

t.test('the package scanner sees every kind of import it must check', async (t) => {
  const sample = "import a from 'x'\nimport type { B } from '@s/y/deep'\nexport { c } from 'z'\nconst d = await import('w')\nimport { e } from './local.js'\n"
  const found = [...sample.matchAll(IMPORT)].map((m) => m[3] ?? m[4])
  t.same(found, ['x', '@s/y/deep', 'z', 'w', './local.js'])
})
