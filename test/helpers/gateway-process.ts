import { spawn, type ChildProcess } from 'node:child_process'
import { freePorts } from './ports.js'

export interface GatewayProcess {
  child: ChildProcess
  base: string
  admin: string
  /** Everything the process printed so far. */
  output: () => string
  /** Resolves when `text` has been printed. */
  waitFor: (text: string) => Promise<void>
  exited: Promise<number | null>
  /** SIGKILL if still running. */
  kill: () => void
}

/** Runs `portcullis gateway` as a child process on free ports and waits for "gateway ready". */
export async function startGatewayProcess (env: Record<string, string>): Promise<GatewayProcess> {
  const [port, adminPort] = await freePorts(2) as [number, number]
  const child = spawn(process.execPath, ['--import', 'tsx', 'cli/portcullis.ts', 'gateway'], {
    // no drain delay on SIGTERM (test/gateway-reload.test.ts checks it in process)
    env: { ...process.env, GATEWAY_PORT: String(port), GATEWAY_ADMIN_PORT: String(adminPort), LOG_LEVEL: 'info', GATEWAY_DRAIN_DELAY: '0', ...env },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let out = ''
  const waiters: Array<{ text: string, resolve: () => void }> = []
  const onData = (d: Buffer): void => {
    out += d.toString()
    for (const w of [...waiters]) {
      if (out.includes(w.text)) {
        waiters.splice(waiters.indexOf(w), 1)
        w.resolve()
      }
    }
  }
  child.stdout!.on('data', onData)
  child.stderr!.on('data', onData)
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)))
  const waitFor = (text: string): Promise<void> => new Promise<void>((resolve, reject) => {
    if (out.includes(text)) { resolve(); return }
    waiters.push({ text, resolve })
    void exited.then((code) => reject(new Error(`gateway exited (${code}) before printing "${text}":\n${out}`)))
  })
  await waitFor('gateway ready')
  return {
    child,
    base: `http://127.0.0.1:${port}`,
    admin: `http://127.0.0.1:${adminPort}`,
    output: () => out,
    waitFor,
    exited,
    kill: () => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL') }
  }
}
