import { spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { stringify } from 'yaml'
import { findPrometheusBinaries, prometheusSkip } from './helpers/prometheus.js'

// deploy/grafana/portcullis.json: every query parses as PromQL (promtool checks them as recording
// rules, offline) and names only metrics the processes export (as docs/operations.md lists them,
// which test/prometheus.test.ts checks against a real scrape).

const FILE = fileURLToPath(new URL('../deploy/grafana/portcullis.json', import.meta.url))
interface Panel { id: number, title: string, targets: Array<{ refId: string, expr: string }> }
const dashboard = JSON.parse(readFileSync(FILE, 'utf8')) as { panels: Panel[], templating: { list: Array<{ name: string }> } }
const queries = dashboard.panels.flatMap((p) => p.targets.map((q) => ({ panel: p, ...q })))
/** Grafana's variables, replaced as Grafana would before the query reaches Prometheus. */
const concrete = (expr: string): string => expr.replaceAll('$__rate_interval', '1m').replaceAll('$__range', '1h').replaceAll('$gateway_job', 'portcullis-gateway')

t.test('the dashboard covers what operators watch', async (t) => {
  const titles = dashboard.panels.map((p) => p.title.toLowerCase()).join(' | ')
  for (const topic of ['traffic', 'latency', 'upstream latency', 'token checks', 'denials', 'rate-limit', 'upstream errors', 'circuit breakers', 'signing keys', 'key age', 'jwks']) {
    t.ok(titles.includes(topic), `a panel on ${topic}`)
  }
  t.ok(queries.length >= dashboard.panels.length, 'every panel has a query')
  for (const q of queries) {
    for (const v of q.expr.match(/\$[a-zA-Z_]+/g) ?? []) {
      t.ok(v.startsWith('$__') || dashboard.templating.list.some((x) => `$${x.name}` === v), `${q.panel.title}: ${v} is a Grafana or dashboard variable`)
    }
  }
})

t.test('every query parses as PromQL (promtool check rules)', { skip: prometheusSkip() }, async (t) => {
  const { promtool } = findPrometheusBinaries()!
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-dashboard-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const check = (exprs: Array<{ record: string, expr: string }>): ReturnType<typeof spawnSync> => {
    writeFileSync(join(dir, 'q.yml'), stringify({ groups: [{ name: 'dashboard', rules: exprs }] }))
    return spawnSync(promtool, ['check', 'rules', join(dir, 'q.yml')], { encoding: 'utf8' })
  }
  const r = check(queries.map((q) => ({ record: `dashboard:panel_${q.panel.id}_${q.refId}`, expr: concrete(q.expr) })))
  t.equal(r.status, 0, `promtool: ${String(r.stdout)}${String(r.stderr)}`)
  t.match(String(r.stdout), new RegExp(`SUCCESS: ${queries.length} rules found`))
  // and the check would catch a broken one
  t.not(check([{ record: 'dashboard:broken', expr: 'sum by (route (rate(x[1m]))' }]).status, 0, 'a malformed query fails')
})

t.test('every query names only metrics the processes export', async (t) => {
  const ops = readFileSync(fileURLToPath(new URL('../docs/operations.md', import.meta.url)), 'utf8')
  for (const q of queries) {
    const names = new Set(q.expr.match(/\b(portcullis_[a-z_]+|http_request_duration_seconds_[a-z]+)\b/g) ?? [])
    t.ok(names.size > 0, `${q.panel.title} ${q.refId}: reads a metric`)
    for (const name of names) {
      const base = name.replace(/_(count|bucket|sum)$/, '')
      t.ok(ops.includes(`\`${base}`), `${q.panel.title}: ${base} is exported (listed in docs/operations.md)`)
    }
  }
})
