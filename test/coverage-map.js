// tap's coverage map: every test measures coverage of the plugin packages' sources only (the
// published code, held to at least 90% of lines by scripts/check-coverage.js in `npm test`).
import { readdirSync } from 'node:fs'

const files = readdirSync('plugins', { withFileTypes: true })
  .filter((d) => d.isDirectory())
  .flatMap((d) => readdirSync(`plugins/${d.name}/src`).filter((f) => f.endsWith('.ts')).map((f) => `plugins/${d.name}/src/${f}`))

export default () => files
