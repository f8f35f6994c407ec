/** Reading a process's Prometheus /metrics in a drill. */

/** The value of a metric line (the first that matches; `labels` is text its label set must contain), 0 when absent. */
export async function metricValue (admin: string, name: string, labels?: string): Promise<number> {
  const body = await (await fetch(`${admin}/metrics`, { signal: AbortSignal.timeout(5000) })).text()
  const esc = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
  const re = labels === undefined
    ? new RegExp(`^${esc(name)}(?:\\{[^}]*\\})? ([0-9.e+-]+)`, 'm')
    : new RegExp(`^${esc(name)}\\{[^}]*${esc(labels)}[^}]*\\} ([0-9.e+-]+)`, 'm')
  const m = re.exec(body)
  return m === null ? 0 : Number(m[1])
}

/** The sum of every line of a metric whose label set contains `labels` (all lines without it). */
export async function metricSum (admin: string, name: string, labels = ''): Promise<number> {
  const body = await (await fetch(`${admin}/metrics`, { signal: AbortSignal.timeout(5000) })).text()
  let sum = 0
  for (const line of body.split('\n')) {
    if (!line.startsWith(name)) continue
    const m = /^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})? ([0-9.e+-]+)$/.exec(line)
    if (m === null || m[1] !== name || !(m[2] ?? '').includes(labels)) continue
    sum += Number(m[3])
  }
  return sum
}
