#!/usr/bin/env node
// Runs the compiled CLI (dist/, made by `npm run build`, which `npm ci` and `npm install` run) when it
// is at least as new as every source; otherwise the TypeScript sources through tsx, so an edit never
// runs stale. tsx's module hooks run in a thread with its own heap (~20-30 MB of resident memory per
// process), which the compiled build does not pay. PORTCULLIS_TSX=1 always runs the sources.
import { fileURLToPath, pathToFileURL } from 'node:url'
import { chooseEntry } from './entry.js'

const entry = chooseEntry(fileURLToPath(new URL('..', import.meta.url)))
if (entry.kind === 'sources') {
  const { register } = await import('tsx/esm/api')
  register()
}
await import(pathToFileURL(entry.path).href)
