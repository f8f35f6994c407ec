import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { fileURLToPath } from 'node:url'
import t from 'tap'

// A process whose log reader is gone (the stack that started it was SIGKILLed, a log shipper died)
// must still exit. pino's default asynchronous stdout flushes what it holds on exit with a loop that
// retries every write error, EPIPE included: such a process hung in that loop for good (a stack's
// service was still up 40 s after the stack's SIGKILL; test/e2e-rotation.test.ts kills a real stack).
// lib/logger.ts, which the gateway's peers (auth, rotation, services, the CLI) log through, batches
// its lines as the gateway does and drops them once the reader is gone.

const ROOT = fileURLToPath(new URL('..', import.meta.url))
const LOGGER = new URL('../lib/logger.ts', import.meta.url).href

/** Starts node with tsx and its stdout piped, and closes the pipe's reading end at once. */
function startWithoutReader (args: string[]): { exited: Promise<unknown[]>, stderr: () => string } {
  const child = spawn(process.execPath, ['--import', 'tsx', ...args], { cwd: ROOT,  stdio: ['ignore', 'pipe', 'pipe'] })
  child.stdout.destroy()
  let stderr = ''
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString() })
  const exited = once(child, 'exit')
  t.teardown(() => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL') })
  return { exited, stderr: () => stderr }
}

const within = <T>(p: Promise<T>, ms: number): Promise<T | 'timeout'> =>
  Promise.race([p, new Promise<'timeout'>((resolve) => setTimeout(() => resolve('timeout'), ms).unref())])

t.test('a logger whose stdout reader is gone lets the process exit', async (t) => {
  const script = `
    const { createLogger, logDestination } = await import(${JSON.stringify(LOGGER)})
    const pino = (await import('pino')).default
    const log = createLogger('t')
    const toStderr = pino({}, logDestination(2))
    await new Promise((resolve) => setTimeout(resolve, 300))
    for (let i = 0; i < 100; i++) log.info({ i }, 'a line nobody reads')
    process.exit(0)`
  const p = startWithoutReader(['--input-type=module', '-e', script])
  const r = await within(p.exited, 15_000)
  t.not(r, 'timeout', `the process exited (stderr: ${p.stderr()})`)
  if (r !== 'timeout') t.same(r, [0, null], 'with its own exit code')
})
