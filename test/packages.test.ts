import t from 'tap'
import { execFile } from 'node:child_process'
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { isBuiltin } from 'node:module'
import { tmpdir } from 'node:os'
import { join, posix, relative, sep } from 'node:path'
import { fileURLToPath } from 'node:url'

/**
 * The plugin packages as a stranger gets them: `npm pack` each one, check what the tarball holds,
 * install the tarballs with fastify into scratch projects in the OS temp folder (outside this
 * repository, so nothing resolves to its node_modules or sources), run a plain ESM app on them,
 * type-check a TypeScript consumer against the shipped .d.ts, and check which packages an install
 * of jwks-auth pulls in. Needs the packages built (`npm ci` / `npm run build`) and the npm registry.
 */

const root = fileURLToPath(new URL('..', import.meta.url))
const fixtures = join(root, 'test/fixtures/consumer')
/** Every plugin package, each after the packages it depends on. */
const PACKAGES = ['core', 'authorize', 'metrics', 'jwks-auth', 'rate-limit', 'propagation', 'tracing']
/** Packages of the gateway's own processes or of development: never pulled in by an install of jwks-auth. */
const SERVER_ONLY = ['better-sqlite3', 'pg', 'ioredis', 'tsx', 'esbuild', 'typescript', 'jose', 'tap', 'eslint']
const TSC_FLAGS = ['--strict', '--noEmit', '--module', 'nodenext', '--moduleResolution', 'nodenext', '--target', 'es2022', '--skipLibCheck', 'false']

interface PackageJson {
  name: string
  version: string
  exports?: Record<string, unknown>
  types?: string
  dependencies?: Record<string, string>
  peerDependencies?: Record<string, string>
  peerDependenciesMeta?: Record<string, { optional?: boolean }>
}
interface PackResult { name: string, filename: string, files: Array<{ path: string }> }
interface LsNode { version?: string, resolved?: string, missing?: boolean, dependencies?: Record<string, LsNode> }
interface Run { code: number | null, stdout: string, stderr: string, signal: string | null }

const readJson = <T>(path: string): T => JSON.parse(readFileSync(path, 'utf8')) as T
const pkgJson = (name: string): PackageJson => readJson<PackageJson>(join(root, 'plugins', name, 'package.json'))

t.setTimeout(300_000)

// Every child process is started with this signal: on teardown, whatever still runs is killed and
// waited for before the scratch folder is removed.
const children = new AbortController()
const running = new Set<Promise<unknown>>()
const work = mkdtempSync(join(tmpdir(), 'portcullis-packages-'))
t.teardown(async () => {
  children.abort()
  await Promise.all(running)
  rmSync(work, { recursive: true, force: true })
})

/**
 * The environment of the child processes: without the variables `npm test` / `npx tap` and tap's
 * coverage set (a prefix or a workspace pointing into the repository, tap's process-info loader in
 * NODE_OPTIONS), so npm and node behave in the scratch projects as in a stranger's terminal.
 */
function childEnv (): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {}
  for (const [k, v] of Object.entries(process.env)) {
    if (/^(TAP|_TAPJS_)/.test(k) || k === 'INIT_CWD' || k === 'NODE_V8_COVERAGE') continue
    if (/^npm_(package_|lifecycle_|command$|config_(local_prefix|prefix|call|yes|workspaces?|include_workspace_root|global)$)/i.test(k)) continue
    if (k === 'NODE_OPTIONS' && v?.includes('@tapjs/') === true) continue
    env[k] = v
  }
  return env
}

/** Runs a command without a shell; resolves with its exit status and output (never rejects). */
function run (cmd: string, args: string[], cwd: string, timeoutMs = 120_000): Promise<Run> {
  const done = new Promise<Run>((resolve) => {
    execFile(cmd, args, { cwd, env: childEnv(), timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024, signal: children.signal, killSignal: 'SIGKILL' }, (err, stdout, stderr) => {
      const e = err as (Error & { code?: unknown, signal?: string | null }) | null
      resolve({ code: e === null ? 0 : typeof e.code === 'number' ? e.code : null, stdout, stderr: e !== null && typeof e.code !== 'number' ? `${stderr}\n${e.message}` : stderr, signal: e?.signal ?? null })
    })
  })
  running.add(done)
  void done.then(() => running.delete(done))
  return done
}

/** npm as the current npm (the one running `npm test` / `npx tap`), else the npm on the PATH. */
function npm (args: string[], cwd: string, timeoutMs?: number): Promise<Run> {
  const cli = process.env.npm_execpath
  return cli !== undefined && /npm-cli\.[cm]?js$/.test(cli)
    ? run(process.execPath, [cli, ...args], cwd, timeoutMs)
    : run('npm', args, cwd, timeoutMs)
}

const tail = (r: Run): string => `exit ${String(r.code)}${r.signal !== null ? ` (${r.signal})` : ''}\n${(r.stderr + r.stdout).trim().split('\n').slice(-30).join('\n')}`

/** Every file under `dir`, as posix paths relative to it. */
function filesUnder (dir: string): string[] {
  if (!existsSync(dir)) return []
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((d) => d.isFile())
    .map((d) => relative(dir, join(d.parentPath, d.name)).split(sep).join('/'))
}

/** The package part of a bare specifier (`@scope/name/x` -> `@scope/name`). */
const packageOf = (spec: string): string => spec.split('/').slice(0, spec.startsWith('@') ? 2 : 1).join('/')

/** Module specifiers of a .js or .d.ts file: static imports and re-exports, dynamic imports, `import("x")` types, type references. */
function specifiers (code: string): string[] {
  const out: string[] = []
  for (const re of [
    /^\s*(?:import|export)\s[^'"]*?\sfrom\s*['"]([^'"]+)['"]/gm,
    /^\s*import\s*['"]([^'"]+)['"]/gm,
    /\bimport\s*\(\s*['"]([^'"]+)['"]\s*\)/g,
    /^\/\/\/\s*<reference\s+types\s*=\s*['"]([^'"]+)['"]/gm
  ]) for (const m of code.matchAll(re)) out.push(m[1]!)
  return out
}

/** What each step hands to the next; a step whose prerequisite failed says so instead of failing obscurely. */
const state: { built: boolean, tarballs: Map<string, string>, scratch?: string, minimal?: Promise<{ dir: string, install: Run }> } = {
  built: false,
  tarballs: new Map()
}
const prerequisite = (t: { fail: (message: string, extra: { output?: string }) => unknown }, what: boolean, message: string, output?: Run): boolean => {
  if (!what) t.fail(message, output === undefined ? {} : { output: tail(output) })
  return what
}

t.test('the workspaces are exactly the plugin packages this test packs', async (t) => {
  const workspaces = readJson<{ workspaces: string[] }>(join(root, 'package.json')).workspaces
  t.same([...workspaces].sort(), PACKAGES.map((p) => `plugins/${p}`).sort(), 'root package.json workspaces = plugins/{' + PACKAGES.join(',') + '}')
})

t.test('each plugin package is built, and its dist/ is not older than its sources', async (t) => {
  let ok = true
  for (const name of PACKAGES) {
    const dir = join(root, 'plugins', name)
    const dist = filesUnder(join(dir, 'dist')).filter((f) => !f.endsWith('.tsbuildinfo'))
    const built = dist.includes('index.js') && dist.includes('index.d.ts')
    t.ok(built, `plugins/${name}/dist holds index.js and index.d.ts${built ? '' : ': it is missing, run `npm run build` (npm ci runs it through the root prepare script)'}`)
    if (!built) { ok = false; continue }
    const sources = filesUnder(join(dir, 'src')).filter((f) => f.endsWith('.ts'))
    const newestSource = Math.max(...sources.map((f) => statSync(join(dir, 'src', f)).mtimeMs))
    const oldestBuilt = Math.min(...dist.map((f) => statSync(join(dir, 'dist', f)).mtimeMs))
    const unbuilt = sources.filter((f) => !f.endsWith('.d.ts')).map((f) => f.replace(/\.ts$/, '')).filter((b) => !dist.includes(`${b}.js`) || !dist.includes(`${b}.d.ts`))
    const fresh = oldestBuilt >= newestSource && unbuilt.length === 0
    t.ok(fresh, `plugins/${name}/dist is built from the current sources${fresh ? '' : `: a source changed after the last build${unbuilt.length > 0 ? ` (not built: ${unbuilt.join(', ')})` : ''}, run \`npm run build\``}`)
    ok &&= fresh
  }
  state.built = ok
})

t.test('npm pack: each tarball holds the build, its types, package.json and README, never sources', async (t) => {
  if (!prerequisite(t, state.built, 'the packages are not built (or stale): run `npm run build` first')) return
  const dest = join(work, 'tarballs')
  mkdirSync(dest)
  const packed = await npm(['pack', '--json', '--ignore-scripts', '--pack-destination', dest, ...PACKAGES.flatMap((p) => ['--workspace', `plugins/${p}`])], root)
  if (!prerequisite(t, packed.code === 0, 'npm pack failed', packed)) return
  const results = JSON.parse(packed.stdout) as PackResult[]
  t.same(results.map((r) => r.name).sort(), PACKAGES.map((p) => `@portcullis/${p}`).sort(), 'one tarball per package')

  for (const name of PACKAGES) {
    const r = results.find((x) => x.name === `@portcullis/${name}`)
    if (r === undefined) continue
    t.test(`@portcullis/${name}`, async (t) => {
      const dir = join(root, 'plugins', name)
      const pkg = pkgJson(name)
      const files = r.files.map((f) => f.path).sort()
      const has = new Set(files)
      t.ok(existsSync(join(dest, r.filename)), `tarball written: ${r.filename}`)
      for (const f of ['package.json', 'dist/index.js', 'dist/index.d.ts']) t.ok(has.has(f), `holds ${f}`)
      for (const doc of ['README.md', 'LICENSE']) {
        if (existsSync(join(dir, doc))) t.ok(has.has(doc), `holds ${doc} (present in plugins/${name})`)
      }
      t.same(files.filter((f) => f.startsWith('dist/')), filesUnder(join(dir, 'dist')).filter((f) => !f.endsWith('.tsbuildinfo')).map((f) => `dist/${f}`).sort(), 'holds every built file of dist/, and nothing else from it')
      t.same(files.filter((f) => /^(src|test|tests|__tests__|coverage|\.tap)\//.test(f)), [], 'no src/, test/ or coverage folders')
      t.same(files.filter((f) => /\.[cm]?tsx?$/.test(f) && !/\.d\.[cm]?ts$/.test(f)), [], 'no TypeScript sources (only .d.ts)')
      t.same(files.filter((f) => /(^|\/)tsconfig[^/]*\.json$|\.tsbuildinfo$|(^|\/)\.(npmrc|env)/.test(f)), [], 'no tsconfig, tsbuildinfo, .npmrc or .env')

      // exports and types point at files the tarball holds
      const dot = pkg.exports?.['.'] as { types?: string, import?: string } | undefined
      t.ok(dot?.types !== undefined && dot.import !== undefined, 'exports["."] names types and import')
      for (const target of [dot?.types, dot?.import, pkg.types]) {
        if (target !== undefined) t.ok(has.has(posix.normalize(target)), `exports/types target ${target} is in the tarball`)
      }
      t.equal(Object.keys(pkg.exports ?? {}).filter((k) => k !== '.' && k !== './package.json').length, 0, 'no deep exports beyond "." and ./package.json')

      // every import of the shipped code is a file of the tarball, a Node built-in or a declared dependency
      const declared = new Set([...Object.keys(pkg.dependencies ?? {}), ...Object.keys(pkg.peerDependencies ?? {})])
      const undeclared: string[] = []
      const dangling: string[] = []
      for (const f of files.filter((x) => /\.(js|d\.ts)$/.test(x))) {
        for (const spec of specifiers(readFileSync(join(dir, f), 'utf8'))) {
          if (spec.startsWith('.')) {
            const target = posix.join(posix.dirname(f), spec)
            const candidates = f.endsWith('.d.ts') ? [target.replace(/\.js$/, '.d.ts'), target] : [target]
            if (!candidates.some((c) => has.has(c))) dangling.push(`${f} -> ${spec}`)
          } else if (!isBuiltin(spec) && !declared.has(packageOf(spec)) && !(f.endsWith('.d.ts') && spec === 'node')) {
            undeclared.push(`${f} -> ${spec}`)
          }
        }
      }
      t.same(dangling, [], 'every relative import resolves to a file in the tarball')
      t.same(undeclared, [], 'every package imported by dist/ (.js and .d.ts) is in dependencies or peerDependencies')
      t.equal(pkg.peerDependencies?.fastify, '^5.0.0', 'fastify ^5 is a peer dependency')
      t.notOk(pkg.dependencies?.fastify, 'fastify is not a dependency (one fastify: the app\'s)')
      const required = Object.keys(pkg.peerDependencies ?? {}).filter((p) => p !== 'fastify' && pkg.peerDependenciesMeta?.[p]?.optional !== true)
      t.same(required, [], 'every peer dependency but fastify is optional')
      state.tarballs.set(name, join(dest, r.filename))
    })
  }
})

const lockVersion = (name: string, fallback: string): string => {
  const lock = readJson<{ packages?: Record<string, { version?: string }> }>(join(root, 'package-lock.json'))
  return lock.packages?.[`node_modules/${name}`]?.version ?? fallback
}

/** A new project in the OS temp folder with the given dependencies installed from the registry and the tarballs. */
async function scratchProject (name: string, installs: string[]): Promise<{ dir: string, install: Run }> {
  const dir = join(work, name)
  mkdirSync(dir)
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: `portcullis-${name}`, version: '0.0.0', private: true, type: 'module' }, null, 2))
  const install = await npm(['install', '--no-audit', '--no-fund', '--prefer-offline', '--fetch-retries=1', '--fetch-timeout=60000', ...installs], dir, 180_000)
  return { dir, install }
}

t.test('the tarballs install into a project outside the repository', async (t) => {
  if (!prerequisite(t, state.tarballs.size === PACKAGES.length, 'not every package was packed (see above)')) return
  t.notOk(work.startsWith(root), `the scratch projects live outside the repository (${work})`)
  const fastify = `fastify@${lockVersion('fastify', '5')}`
  const typesNode = `@types/node@${lockVersion('@types/node', '20')}`
  t.match(fastify, /^fastify@5(\.|$)/, 'fastify 5, the version of the lockfile')
  t.match(typesNode, /^@types\/node@20(\.|$)/, '@types/node 20, the version of the lockfile')
  const tgz = (names: string[]): string[] => names.map((n) => state.tarballs.get(n)!)
  // The minimal project of the last test installs meanwhile.
  state.minimal = scratchProject('minimal', [...tgz(['core', 'authorize', 'metrics', 'jwks-auth']), fastify])
  const { dir, install } = await scratchProject('consumer', [...tgz(PACKAGES), fastify, typesNode])
  if (!prerequisite(t, install.code === 0, 'npm install in the scratch project failed (the npm registry must be reachable; CI has it)', install)) return

  const ls = await npm(['ls', '--all', '--json'], dir)
  t.equal(ls.code, 0, 'npm ls finds no missing or invalid dependency', { output: ls.code === 0 ? undefined : tail(ls) })
  const tree = JSON.parse(ls.stdout) as LsNode
  for (const name of PACKAGES) {
    t.match(tree.dependencies?.[`@portcullis/${name}`]?.resolved ?? '', /^file:.*\.tgz$/, `@portcullis/${name} is the packed tarball, not a registry package`)
  }
  const parseable = await npm(['ls', '--all', '--parseable'], dir)
  const copies = parseable.stdout.split('\n').filter((p) => p.includes(`${sep}@portcullis${sep}`))
  t.same(copies.map((p) => relative(dir, p).split(sep).join('/')).sort(), PACKAGES.map((p) => `node_modules/@portcullis/${p}`).sort(), 'one copy of each package (inter-package dependencies deduplicated onto the tarballs)')
  t.notOk(existsSync(join(dir, 'node_modules/ioredis')), 'ioredis, an optional peer of rate-limit, is not installed')
  state.scratch = dir
})

t.test('a plain ESM app (no build step) runs on the installed packages', async (t) => {
  if (!prerequisite(t, state.scratch !== undefined, 'no scratch project (see above)')) return
  const dir = state.scratch!
  copyFileSync(join(fixtures, 'app.mjs'), join(dir, 'app.mjs'))
  const r = await run(process.execPath, ['app.mjs'], dir, 60_000)
  if (!prerequisite(t, r.code === 0, 'node app.mjs failed', r)) return
  const line = r.stdout.trim().split('\n').pop() ?? ''
  let out: Record<string, unknown>
  try {
    out = JSON.parse(line) as Record<string, unknown>
  } catch {
    t.fail('app.mjs did not print a JSON result', { output: tail(r) })
    return
  }
  const res = out as {
    me: { status: number, sub: string }
    meWithoutToken: { status: number, wwwAuthenticate: string | null }
    meBadToken: { status: number }
    jwtVerify: { status: number, sub: string }
    jwtVerifyWithoutToken: { status: number }
    public: { status: number, user: unknown }
    adminAsUser: { status: number }
    adminAsAdmin: { status: number, sub: string, role: string }
    limited: Array<{ status: number, limit: string | null, retryAfter: string | null }>
    downstream: { status: number, upstreamStatus: number, authorization: string | null, requestId: string | null, replyRequestId: string | null }
    sentAuthorization: string
    metrics: { status: number, contentType: string | null, hasAuthRequests: boolean, authSuccessLine: string | null }
    metricsOnPublicApp: { status: number }
    jwksReady: boolean
    jwksFetches: number
  }
  t.same(res.me, { status: 200, sub: 'user-42' }, 'jwks-auth: GET /me with a good token -> 200 and request.user.sub')
  t.equal(res.meWithoutToken.status, 401, 'jwks-auth: no token -> 401')
  t.match(res.meWithoutToken.wwwAuthenticate ?? '', /^Bearer/, '401 carries a Bearer challenge')
  t.equal(res.meBadToken.status, 401, 'jwks-auth: a token with a broken signature -> 401')
  t.same(res.jwtVerify, { status: 200, sub: 'user-42' }, 'request.jwtVerify() on an auth:false route verifies the token')
  t.equal(res.jwtVerifyWithoutToken.status, 401, 'request.jwtVerify() without a token -> 401')
  t.same(res.public, { status: 200, user: null }, 'config.auth false: no token needed, request.user null')
  t.equal(res.adminAsUser.status, 403, 'authorize: config.auth.roles [admin] refuses a user token with 403')
  t.same(res.adminAsAdmin, { status: 200, sub: 'admin-1', role: 'admin' }, 'authorize: an admin token passes')
  t.same(res.limited.map((l) => l.status), [200, 200, 429], 'rate-limit: the third call past max 2 -> 429')
  t.equal(res.limited[0]?.limit, '2', 'RateLimit-Limit header')
  t.ok(res.limited[2]?.retryAfter !== null && Number(res.limited[2]?.retryAfter) > 0, 'Retry-After on the 429')
  t.match(res.sentAuthorization, /^Bearer [\w-]+\.[\w-]+\.[\w-]+$/, 'the caller sent a bearer JWT')
  t.equal(res.downstream.status, 200, 'the route calling downstream answers 200')
  t.equal(res.downstream.upstreamStatus, 200, 'the downstream answered 200')
  t.equal(res.downstream.authorization, res.sentAuthorization, "propagation: the downstream saw the caller's exact Authorization header")
  t.ok(res.downstream.requestId !== null && res.downstream.requestId === res.downstream.replyRequestId, 'propagation: the downstream saw the request id the caller was answered with')
  t.equal(res.metrics.status, 200, 'metrics admin: /metrics -> 200')
  t.match(res.metrics.contentType ?? '', /^text\/plain/, 'Prometheus text')
  t.ok(res.metrics.hasAuthRequests, '/metrics holds portcullis_auth_requests_total')
  t.match(res.metrics.authSuccessLine ?? '', /^portcullis_auth_requests_total\{[^}]*result="success"[^}]*\} 5$/, 'five successful verifications counted')
  t.equal(res.metricsOnPublicApp.status, 404, 'no /metrics on the public app')
  t.equal(res.jwksReady, true, 'jwksAuth.isReady()')
  t.equal(res.jwksFetches, 1, 'the JWKS was fetched once')
})

t.test('a TypeScript consumer type-checks against the shipped .d.ts (strict, nodenext, lib check on)', async (t) => {
  if (!prerequisite(t, state.scratch !== undefined, 'no scratch project (see above)')) return
  const dir = state.scratch!
  const source = readFileSync(join(fixtures, 'app.ts'), 'utf8')
  t.ok((source.match(/\/\/ @ts-expect-error /g) ?? []).length >= 5, 'the consumer holds wrong uses marked @ts-expect-error (an unchecked type makes them fail)')
  t.notMatch(source, /\bas (any|unknown)\b|<any>/, 'no casts to any/unknown in the consumer')
  copyFileSync(join(fixtures, 'app.ts'), join(dir, 'app.ts'))
  const tsc = join(root, 'node_modules/typescript/bin/tsc')
  const r = await run(process.execPath, [tsc, ...TSC_FLAGS, 'app.ts'], dir, 120_000)
  t.equal(r.code, 0, `tsc ${TSC_FLAGS.join(' ')} app.ts passes`, r.code === 0 ? {} : { output: tail(r) })
  t.notOk(existsSync(join(dir, 'app.js')), 'nothing emitted')
})

t.test('installing jwks-auth and authorize pulls in no server-only or development package', async (t) => {
  if (!prerequisite(t, state.minimal !== undefined, 'no minimal scratch project (see above)')) return
  const { dir, install } = await state.minimal!
  if (!prerequisite(t, install.code === 0, 'npm install in the minimal scratch project failed (the npm registry must be reachable; CI has it)', install)) return
  const ls = await npm(['ls', '--omit=dev', '--all', '--json'], dir)
  t.equal(ls.code, 0, 'npm ls finds no missing or invalid dependency', { output: ls.code === 0 ? undefined : tail(ls) })
  const names = new Set<string>()
  const walk = (node: LsNode): void => {
    for (const [name, child] of Object.entries(node.dependencies ?? {})) {
      // an optional peer dependency left uninstalled (jwks-auth's ioredis) is listed without a version
      if (child.version === undefined || child.missing === true) continue
      names.add(name)
      walk(child)
    }
  }
  walk(JSON.parse(ls.stdout) as LsNode)
  for (const n of ['@portcullis/jwks-auth', '@portcullis/authorize', '@portcullis/core', '@portcullis/metrics', 'fastify']) t.ok(names.has(n), `${n} installed`)
  t.same(SERVER_ONLY.filter((n) => names.has(n)), [], `none of ${SERVER_ONLY.join(', ')} in the dependency tree`)
  t.same(SERVER_ONLY.filter((n) => existsSync(join(dir, 'node_modules', n))), [], 'none of them in node_modules either')
  t.same([...names].filter((n) => n.startsWith('@portcullis/') && !['jwks-auth', 'authorize', 'core', 'metrics'].includes(n.slice(12))), [], 'no other @portcullis package needed')
})
