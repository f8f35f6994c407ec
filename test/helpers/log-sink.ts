import { Writable } from 'node:stream'

export type LogRecord = Record<string, unknown>

/** A pino destination collecting every line written to it, parsed (key order kept). */
export function logSink (): { lines: LogRecord[], sink: Writable } {
  const lines: LogRecord[] = []
  const sink = new Writable({
    write (chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString().split('\n')) if (l !== '') lines.push(JSON.parse(l) as LogRecord)
      cb()
    }
  })
  return { lines, sink }
}
