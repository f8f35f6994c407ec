#!/usr/bin/env node
// Runs the compiled CLI (dist/, made by `npm run build`, which `npm ci` and `npm install` run) when it
// is at least as new as every source; otherwise, in a source checkout with its dev dependencies, the
// TypeScript sources through tsx, so an edit never runs stale. An installed package has no sources
// and always runs the compiled build: tsx is a dev dependency only. tsx's module hooks run in a
// thread with its own heap (~20-30 MB of resident memory per process), which the compiled build does
// not pay. PORTCULLIS_TSX=1 always runs the sources.
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { chooseEntry } from './entry.js'

const root = fileURLToPath(new URL('..', import.meta.url))
const arg = process.argv[2]
if (arg === '--version' || arg === '-v' || arg === 'version') {
  console.log(JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).version)
  process.exit(0)
}

const entry = chooseEntry(root)
if (entry.kind === 'sources') {
  let register
  try {
    ({ register } = await import('tsx/esm/api'))
  } catch {
    console.error('portcullis: the sources are newer than the build and tsx (a dev dependency) is not installed: run `npm run build`')
    process.exit(1)
  }
  // The sources import the plugin packages through the tsconfig's paths (plugins/*/src), whatever
  // the working folder; the processes this one starts inherit the setting.
  process.env.TSX_TSCONFIG_PATH ??= join(root, 'tsconfig.json')
  register()
}
await import(pathToFileURL(entry.path).href)
