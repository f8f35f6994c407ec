import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { accessSync, constants, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as delay } from 'node:timers/promises'
import { stringify } from 'yaml'
import { freePort } from './ports.js'

/**
 * A Prometheus server of the test's own (Debian's `prometheus` package: `prometheus` and `promtool`
 * on PATH), on a free port of 127.0.0.1 with its TSDB in a temp folder, scraping the targets it is
 * given every second. The machine's own Prometheus (if any, on 9090) is never touched.
 */

export interface PrometheusBinaries { prometheus: string, promtool: string }

/** `prometheus` and `promtool` from PATH (Debian installs both to /usr/bin), or null. */
export function findPrometheusBinaries (): PrometheusBinaries | null {
  const dirs = (process.env.PATH ?? '').split(':').filter((d) => d !== '')
  const find = (name: string): string | undefined => {
    for (const d of dirs) {
      const p = join(d, name)
      try {
        accessSync(p, constants.X_OK)
        return p
      } catch { /* not here */ }
    }
    return undefined
  }
  const prometheus = find('prometheus')
  const promtool = find('promtool')
  return prometheus !== undefined && promtool !== undefined ? { prometheus, promtool } : null
}

/**
 * A skip reason for tests that need a private Prometheus, or false when one can be started. With
 * CI=true a missing binary is an error, not a skip (.ci/run installs the `prometheus` package).
 */
export function prometheusSkip (): string | false {
  if (findPrometheusBinaries() !== null) return false
  const why = 'prometheus and promtool not found on PATH (Debian package `prometheus`)'
  if (process.env.CI === 'true') throw new Error(`a private Prometheus is required when CI=true: ${why}`)
  return `${why} (required only when CI=true)`
}

/** One process to scrape: its job name and its full metrics URL (`http://127.0.0.1:<port>/metrics`). */
export interface ScrapeTarget { job: string, url: string }

/** One element of an instant vector. */
export interface Sample { metric: Record<string, string>, value: number }

/** A target as `/api/v1/targets` reports it. */
export interface TargetState {
  job: string
  scrapeUrl: string
  health: string
  lastError: string
  /** When the last scrape started, epoch ms (-Infinity before the first one). */
  lastScrape: number
}

export interface PrivatePrometheus {
  /** http://127.0.0.1:<port> */
  readonly url: string
  readonly port: number
  /** The generated configuration (YAML). */
  readonly config: string
  /** Everything the server printed (the last 64 KiB), for failure messages. */
  log(): string
  /** An instant query through `/api/v1/query`; throws on any error Prometheus answers. */
  query(expr: string): Promise<Sample[]>
  /**
   * The value of a query that yields at most one sample (e.g. a `sum(...)`): that sample's value, or
   * `undefined` when the result is empty (no such series yet). Throws when it yields several.
   */
  value(expr: string): Promise<number | undefined>
  /** The active targets. */
  targets(): Promise<TargetState[]>
  /** The label sets of every series matching the selector (`/api/v1/series`). */
  series(match: string): Promise<Array<Record<string, string>>>
  /**
   * Waits until every target has completed a scrape that started after `after` (epoch ms): waits for
   * each target's first scrape started after `after`, then for the next one, so that the first has
   * certainly been appended and is visible to queries. Resolves with the targets then.
   */
  scrapedAfter(after: number, timeoutMs?: number): Promise<TargetState[]>
  /** Stops the server (SIGTERM, SIGKILL after 10 s) and removes its folder; idempotent. */
  stop(): Promise<void>
}

export interface PrivatePrometheusOptions {
  targets: ScrapeTarget[]
  /** @defaultValue '1s' */
  scrapeInterval?: string
  /** Longest wait for `/-/ready`, ms. @defaultValue 30000 */
  startTimeout?: number
}

/** The scrape configuration for the targets: one job each, `scrape_interval` for all. */
export function scrapeConfig (targets: ScrapeTarget[], scrapeInterval = '1s'): string {
  return stringify({
    global: { scrape_interval: scrapeInterval, scrape_timeout: scrapeInterval, evaluation_interval: scrapeInterval },
    scrape_configs: targets.map((t) => {
      const u = new URL(t.url)
      return { job_name: t.job, scheme: u.protocol.replace(':', ''), metrics_path: u.pathname, static_configs: [{ targets: [u.host] }] }
    })
  })
}

/** Prometheus' RFC 3339 timestamps carry nanoseconds: keep milliseconds for Date.parse. */
function epochMs (rfc3339: string): number {
  const ms = Date.parse(rfc3339.replace(/(\.\d{3})\d+/, '$1'))
  return Number.isNaN(ms) || ms < 0 ? -Infinity : ms
}

/** Starts a private Prometheus scraping `targets`; throws (with its output) when it cannot. */
export async function startPrometheus (opts: PrivatePrometheusOptions): Promise<PrivatePrometheus> {
  const bins = findPrometheusBinaries()
  if (bins === null) throw new Error('cannot start a private Prometheus: prometheus and promtool not found on PATH')
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-prom-'))
  const config = scrapeConfig(opts.targets, opts.scrapeInterval)
  const configFile = join(dir, 'prometheus.yml')
  writeFileSync(configFile, config)

  let child: ChildProcess | undefined
  let exited: Promise<void> = Promise.resolve()
  let output = ''
  let stopped = false
  let spawnFailed = false
  const alive = (): boolean => child !== undefined && !spawnFailed && child.exitCode === null && child.signalCode === null
  const append = (d: Buffer): void => {
    output += d.toString()
    if (output.length > 65536) output = output.slice(-65536)
  }
  const onExit = (): void => {
    if (alive()) child!.kill('SIGKILL')
    try { rmSync(dir, { recursive: true, force: true }) } catch { /* best effort */ }
  }
  process.on('exit', onExit)

  const stop = async (): Promise<void> => {
    if (stopped) return
    stopped = true
    if (alive()) {
      child!.kill('SIGTERM')
      const timer = setTimeout(() => { if (alive()) child!.kill('SIGKILL') }, 10_000)
      await exited
      clearTimeout(timer)
    }
    process.off('exit', onExit)
    rmSync(dir, { recursive: true, force: true })
  }

  let port = 0
  let url = ''
  // The port is free a moment before Prometheus binds it: another process may take it first, so a
  // start that fails with "address already in use" is tried again on another port.
  for (let attempt = 1; ; attempt++) {
    port = await freePort()
    url = `http://127.0.0.1:${port}`
    const proc = spawn(bins.prometheus, [
      `--config.file=${configFile}`,
      `--storage.tsdb.path=${join(dir, 'data')}`,
      `--web.listen-address=127.0.0.1:${port}`,
      '--storage.tsdb.retention.time=1h'
    ], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] })
    child = proc
    proc.stdout!.on('data', append)
    proc.stderr!.on('data', append)
    exited = new Promise<void>((resolve) => {
      proc.once('exit', () => resolve())
      proc.once('error', (err) => { spawnFailed = true; append(Buffer.from(`spawn error: ${err.message}\n`)); resolve() })
    })
    const deadline = Date.now() + (opts.startTimeout ?? 30_000)
    let ready = false
    while (!ready) {
      if (!alive()) break
      try {
        ready = (await fetch(`${url}/-/ready`, { signal: AbortSignal.timeout(1000) })).status === 200
      } catch { /* not listening yet */ }
      if (ready) break
      if (Date.now() > deadline) {
        await stop()
        throw new Error(`prometheus on port ${port} was not ready within ${opts.startTimeout ?? 30_000} ms:\n${output}`)
      }
      await delay(100)
    }
    if (ready) break
    await exited
    if (attempt < 3 && /address already in use/i.test(output)) { output = ''; continue }
    await stop()
    throw new Error(`prometheus exited (${proc.exitCode ?? proc.signalCode}) before it was ready:\n${output}`)
  }

  const api = async (path: string): Promise<unknown> => {
    const res = await fetch(`${url}${path}`, { signal: AbortSignal.timeout(10_000) })
    const body = await res.json() as { status: string, data?: unknown, error?: string, errorType?: string }
    if (body.status !== 'success') throw new Error(`prometheus ${path}: ${res.status} ${body.errorType ?? ''} ${body.error ?? ''}`)
    return body.data
  }

  const query = async (expr: string): Promise<Sample[]> => {
    const data = await api(`/api/v1/query?query=${encodeURIComponent(expr)}`) as { resultType: string, result: unknown }
    if (data.resultType === 'vector') {
      return (data.result as Array<{ metric: Record<string, string>, value: [number, string] }>).map((r) => ({ metric: r.metric, value: Number(r.value[1]) }))
    }
    if (data.resultType === 'scalar') return [{ metric: {}, value: Number((data.result as [number, string])[1]) }]
    throw new Error(`prometheus query ${expr}: a ${data.resultType}, not an instant vector or scalar`)
  }

  const targets = async (): Promise<TargetState[]> => {
    const data = await api('/api/v1/targets?state=active') as { activeTargets: Array<{ labels: Record<string, string>, scrapeUrl: string, health: string, lastError: string, lastScrape: string }> }
    return data.activeTargets.map((t) => ({ job: t.labels.job ?? '', scrapeUrl: t.scrapeUrl, health: t.health, lastError: t.lastError, lastScrape: epochMs(t.lastScrape) }))
  }

  return {
    url,
    port,
    config,
    log: () => output,
    query,
    value: async (expr) => {
      const r = await query(expr)
      if (r.length > 1) throw new Error(`prometheus query ${expr}: ${r.length} samples, expected at most one: ${JSON.stringify(r)}`)
      return r[0]?.value
    },
    targets,
    series: async (match) => await api(`/api/v1/series?match[]=${encodeURIComponent(match)}`) as Array<Record<string, string>>,
    scrapedAfter: async (after, timeoutMs = 20_000) => {
      const deadline = Date.now() + timeoutMs
      const first = new Map<string, number>() // scrapeUrl -> the first scrape started after `after`
      for (;;) {
        const list = await targets()
        for (const t of list) if (!first.has(t.scrapeUrl) && t.lastScrape > after) first.set(t.scrapeUrl, t.lastScrape)
        if (list.length > 0 && list.every((t) => t.lastScrape > (first.get(t.scrapeUrl) ?? Infinity))) return list
        if (Date.now() > deadline) {
          throw new Error(`not every target was scraped twice after ${new Date(after).toISOString()} within ${timeoutMs} ms: ${JSON.stringify(list)}`)
        }
        await delay(200)
      }
    },
    stop
  }
}

/** `promtool check metrics` on one exposition: its exit status (0 clean, 3 lint problems, 1 unparsable) and what it printed. */
export function promtoolCheckMetrics (exposition: string): { status: number | null, output: string } {
  const bins = findPrometheusBinaries()
  if (bins === null) throw new Error('promtool not found on PATH')
  const r = spawnSync(bins.promtool, ['check', 'metrics'], { input: exposition, encoding: 'utf8', timeout: 30_000 })
  if (r.error !== undefined) throw r.error
  return { status: r.status, output: `${r.stdout}${r.stderr}`.trim() }
}
