/** One line for a failed command: the message, never a stack trace (set DEBUG=1 for that). */
export function formatCliError (err: unknown): string {
  if (process.env.DEBUG === '1' && err instanceof Error) return err.stack ?? err.message
  if (err instanceof Error) return `portcullis: ${err.message}`
  return `portcullis: ${String(err)}`
}

/** Prints rows as an aligned text table. */
export function table (rows: Array<Record<string, string>>, columns: string[]): string {
  const widths = columns.map((c) => Math.max(c.length, ...rows.map((r) => (r[c] ?? '').length)))
  const line = (cells: string[]): string => cells.map((v, i) => v.padEnd(widths[i]!)).join('  ').trimEnd()
  return [line(columns), ...rows.map((r) => line(columns.map((c) => r[c] ?? '')))].join('\n')
}
