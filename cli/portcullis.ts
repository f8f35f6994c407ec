import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { COMMANDS, type CommandModule } from './commands.js'
import { formatCliError } from './output.js'
import { STOP_WITH_STACK_ENV } from './stack/children.js'

/**
 * A child of `portcullis start` stops (SIGTERM to itself: the command's own graceful shutdown) when
 * its IPC channel to the stack closes, or when it is no longer the stack's child (its parent pid
 * changed: the stack died and the channel's close was not seen). Its log lines then have no reader:
 * lib/logger.ts writes them so that this cannot keep it from exiting. Nothing happens without the
 * channel (a process run by hand).
 */
function stopWithStack (): void {
  delete process.env[STOP_WITH_STACK_ENV] // not passed on to anything this process starts
  if (process.channel === undefined) return
  process.channel.unref() // never the reason the process stays up
  const parent = process.ppid
  let stopping = false
  const stop = (): void => {
    if (stopping) return
    stopping = true
    clearInterval(watch)
    process.kill(process.pid, 'SIGTERM')
  }
  const watch = setInterval(() => { if (process.ppid !== parent) stop() }, 1000).unref()
  process.once('disconnect', stop)
}

const USAGE = `Usage: portcullis <command> [options]

Commands:
${COMMANDS.map((c) => `  ${c.name.padEnd(10)} ${c.summary}`).join('\n')}

Run "portcullis <command> --help" for a command's options and environment variables,
"portcullis --version" for the version.
A failed command prints one line; set DEBUG=1 to print its stack trace instead.`

async function main (argv: string[]): Promise<number> {
  const [name, ...rest] = argv
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    console.log(USAGE)
    return name === undefined ? 1 : 0
  }
  const entry = COMMANDS.find((c) => c.name === name)
  if (entry === undefined) {
    console.error(`portcullis: unknown command "${name}"\n\n${USAGE}`)
    return 1
  }
  // Source checkout (run through tsx): the .ts file; compiled build (npm run build): the .js file.
  const candidates = [entry.module.replace(/\.js$/, '.ts'), entry.module].map((m) => new URL(m, import.meta.url))
  const url = candidates.find((u) => existsSync(fileURLToPath(u)))
  if (url === undefined) {
    console.error(`portcullis: command "${name}" is not part of this build yet`)
    return 1
  }
  const mod = await import(url.href) as CommandModule
  if (rest.includes('--help') || rest.includes('-h')) {
    console.log(mod.help)
    return 0
  }
  if (process.env[STOP_WITH_STACK_ENV] === '1') stopWithStack()
  return await mod.run(rest)
}

main(process.argv.slice(2)).then((code) => {
  // Daemons keep the event loop alive themselves; one-shot commands end here.
  if (code !== 0 || process.exitCode === undefined) process.exitCode = code
}, (err: unknown) => {
  console.error(formatCliError(err))
  process.exitCode = 1
})
