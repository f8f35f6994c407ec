import js from '@eslint/js'
import tseslint from 'typescript-eslint'

// The layering (docs/design.md): plugin packages import nothing of this repository but other plugin
// packages by name; lib/ imports plugin packages only; store/ imports lib/ and plugin packages;
// each process (auth, gateway, rotation, services) imports lib/, store/ and plugin packages, never
// another process; cli/ uses lib/ and store/ and starts processes through their module paths
// (cli/commands.ts), so one command never loads another's code. Nobody reaches into a plugin
// package by a relative path. `npm run lint` fails on any import that breaks these floors.
const PROCESSES = ['auth', 'gateway', 'rotation', 'services']
const intoPlugins = { group: ['**/plugins/**'], message: 'import a plugin package by its name (@portcullis/...), never by a path into it' }
const outOf = (dirs, why) => ({ group: dirs.flatMap((d) => [`../${d}/**`, `../../${d}/**`, `../../../${d}/**`]), message: why })
const layer = (files, patterns) => ({ files, rules: { 'no-restricted-imports': ['error', { patterns }] } })

export default tseslint.config(
  { ignores: ['node_modules/**', 'dist/**', 'plugins/*/dist/**', 'data/**', '.tap/**', 'coverage/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      '@typescript-eslint/consistent-type-imports': 'error',
      'no-console': 'off'
    }
  },
  layer(['plugins/*/src/**/*.ts'], [{ group: ['../*', '../../*', '@portcullis/*/*'], message: 'a plugin package imports only its own files (./x.js) and other packages by name' }]),
  layer(['lib/**/*.ts'], [intoPlugins, outOf(['store', 'cli', ...PROCESSES], 'lib/ sits below the store and the processes')]),
  layer(['store/**/*.ts'], [intoPlugins, outOf(['cli', ...PROCESSES], 'store/ sits below the processes and the CLI')]),
  ...PROCESSES.map((p) => layer([`${p}/**/*.ts`], [intoPlugins, outOf(['cli', ...PROCESSES.filter((o) => o !== p)], `${p}/ is a process: it does not import another process or the CLI`)])),
  layer(['cli/**/*.ts'], [intoPlugins, outOf(PROCESSES, 'cli/ starts a process through its module path (cli/commands.ts), never by importing its code')]),
  {
    files: ['bin/**/*.js', 'scripts/**/*.js'],
    languageOptions: { globals: { process: 'readonly', console: 'readonly', URL: 'readonly' } }
  }
)
