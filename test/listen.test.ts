import { execFile } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { createServer, type Server } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import Fastify from 'fastify'
import t, { type Test } from 'tap'
import { listenOn } from '../lib/listen.js'

const run = promisify(execFile)
const CLI = fileURLToPath(new URL('../cli/portcullis.ts', import.meta.url))

async function occupy (): Promise<{ server: Server, port: number }> {
  const server = createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const addr = server.address()
  if (addr === null || typeof addr !== 'object') throw new Error('no address')
  return { server, port: addr.port }
}

t.test('listenOn names the setting when the port is taken', async (t) => {
  const { server, port } = await occupy()
  t.teardown(() => server.close())
  const app = Fastify()
  t.teardown(() => app.close())
  await t.rejects(listenOn(app, '127.0.0.1', port, 'SOME_PORT'), {
    code: 'PORTCULLIS_CONFIG',
    message: `Invalid configuration: SOME_PORT: 127.0.0.1:${port} is already in use`
  })
})

async function cliFails (t: Test, args: string[], env: Record<string, string>): Promise<string> {
  try {
    await run(process.execPath, ['--import', 'tsx', CLI, ...args], { env: { ...process.env, ...env }, timeout: 30_000 })
  } catch (err) {
    const e = err as { code: number, stderr: string }
    t.equal(e.code, 1, 'exit code 1')
    return e.stderr.trim()
  }
  t.fail('the command should have failed')
  return ''
}

t.test('auth and rotation exit with one line naming the busy port setting', async (t) => {
  const { server, port } = await occupy()
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-listen-'))
  t.teardown(() => { server.close(); rmSync(dir, { recursive: true, force: true }) })
  const env = { PORTCULLIS_DATA_DIR: dir, LOG_LEVEL: 'silent', PORTCULLIS_KEY_SECRETS: 'x'.repeat(43) }

  // the store line (which store the process opened), then the one line naming the setting
  const storeLine = `portcullis: store: SQLite ${join(dir, 'portcullis.db')}`
  const auth = await cliFails(t, ['auth'], { ...env, AUTH_PORT: String(port), AUTH_ADMIN_PORT: '0' })
  t.equal(auth, `${storeLine}\nportcullis: Invalid configuration: AUTH_PORT: 127.0.0.1:${port} is already in use`)

  const rotation = await cliFails(t, ['rotation'], { ...env, ROTATION_METRICS_PORT: String(port) })
  t.equal(rotation, `${storeLine}\nportcullis: Invalid configuration: ROTATION_METRICS_PORT: 127.0.0.1:${port} is already in use`)
})
