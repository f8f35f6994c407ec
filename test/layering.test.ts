import { ESLint } from 'eslint'
import { join } from 'node:path'
import t from 'tap'

// The floors of docs/design.md, as `npm run lint` enforces them (eslint.config.js): each case is an
// import the lint must refuse in that file, and the last ones imports it must allow.
const ROOT = join(import.meta.dirname, '..')
const eslint = new ESLint({ cwd: ROOT })

async function restricted (file: string, source: string): Promise<string[]> {
  const [result] = await eslint.lintText(source, { filePath: join(ROOT, file) })
  return result!.messages.filter((m) => m.ruleId === 'no-restricted-imports').map((m) => m.message)
}

const refused: Array<[file: string, importPath: string, why: RegExp]> = [
  ['plugins/jwks-auth/src/x.ts', '../../../lib/env.js', /plugin package imports only its own files/],
  ['plugins/jwks-auth/src/x.ts', '../../core/src/errors.js', /plugin package imports only its own files/],
  ['plugins/jwks-auth/src/x.ts', '@portcullis/core/src/errors.js', /plugin package imports only its own files/],
  ['lib/x.ts', '../store/db.js', /lib\/ sits below/],
  ['lib/x.ts', '../plugins/jwks-auth/src/options.js', /by its name/],
  ['store/x.ts', '../rotation/worker.js', /store\/ sits below/],
  ['store/x.ts', '../cli/keys.js', /store\/ sits below/],
  ['gateway/x.ts', '../auth/signer.js', /gateway\/ is a process/],
  ['auth/routes/x.ts', '../../gateway/headers.js', /auth\/ is a process/],
  ['rotation/x.ts', '../services/config.js', /rotation\/ is a process/],
  ['services/order/x.ts', '../../plugins/propagation/src/index.js', /by its name/],
  ['cli/x.ts', '../plugins/metrics/src/index.js', /by its name/],
  ['cli/x.ts', '../rotation/lifecycle.js', /cli\/ starts a process/],
  ['cli/stack/x.ts', '../../gateway/server.js', /cli\/ starts a process/]
]

for (const [file, path, why] of refused) {
  t.test(`${file} may not import ${path}`, async (t) => {
    const messages = await restricted(file, `import { x } from '${path}'\nexport { x }\n`)
    t.equal(messages.length, 1)
    t.match(messages[0], why)
  })
}

t.test('the allowed floors pass', async (t) => {
  t.same(await restricted('gateway/x.ts', "import { a } from '../lib/env.js'\nimport { b } from '../store/db.js'\nimport { c } from '@portcullis/jwks-auth'\nimport { d } from './routes.js'\nexport { a, b, c, d }\n"), [])
  t.same(await restricted('store/x.ts', "import { a } from '../lib/env.js'\nimport { b } from '@portcullis/jwks-auth'\nexport { a, b }\n"), [])
  t.same(await restricted('plugins/jwks-auth/src/x.ts', "import { a } from './verify.js'\nimport { b } from '@portcullis/core'\nexport { a, b }\n"), [])
  t.same(await restricted('cli/x.ts', "import { a } from '../store/index.js'\nexport { a }\n"), [])
})
