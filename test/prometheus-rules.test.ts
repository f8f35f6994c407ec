import { spawnSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { parse } from 'yaml'
import { findPrometheusBinaries, prometheusSkip } from './helpers/prometheus.js'

// deploy/prometheus/alerts.yml: promtool validates it and runs its unit tests (alerts.test.yml: one
// firing and one quiet case per alert), and every metric an alert reads is one the processes export.

const DIR = fileURLToPath(new URL('../deploy/prometheus/', import.meta.url))
const skip = prometheusSkip()

interface Rule { alert: string, expr: string }
const rules = (parse(readFileSync(join(DIR, 'alerts.yml'), 'utf8')) as { groups: Array<{ rules: Rule[] }> }).groups.flatMap((g) => g.rules)

t.test('promtool check rules and promtool test rules pass', { skip }, async (t) => {
  const { promtool } = findPrometheusBinaries()!
  const check = spawnSync(promtool, ['check', 'rules', 'alerts.yml'], { cwd: DIR, encoding: 'utf8' })
  t.equal(check.status, 0, `promtool check rules: ${check.stdout}${check.stderr}`)
  t.match(check.stdout, new RegExp(`SUCCESS: ${rules.length} rules found`))
  const test = spawnSync(promtool, ['test', 'rules', 'alerts.test.yml'], { cwd: DIR, encoding: 'utf8' })
  t.equal(test.status, 0, `promtool test rules: ${test.stdout}${test.stderr}`)
})

t.test('every alert has a firing case and a quiet case in alerts.test.yml', async (t) => {
  const tests = (parse(readFileSync(join(DIR, 'alerts.test.yml'), 'utf8')) as { tests: Array<{ input_series: Array<{ series: string }>, alert_rule_test: Array<{ alertname: string, exp_alerts: Array<{ exp_labels: { instance?: string } }> }> }> }).tests
  for (const r of rules) {
    const cases = tests.filter((c) => c.alert_rule_test.some((a) => a.alertname === r.alert))
    t.ok(cases.length > 0, `${r.alert} is tested`)
    const firing = new Set(cases.flatMap((c) => c.alert_rule_test.filter((a) => a.alertname === r.alert).flatMap((a) => a.exp_alerts.map((e) => e.exp_labels.instance))))
    const instances = new Set(cases.flatMap((c) => c.input_series.map((s) => /instance="([^"]+)"/.exec(s.series)?.[1])))
    t.ok(firing.size > 0, `${r.alert}: a firing case`)
    t.ok([...instances].some((i) => !firing.has(i)), `${r.alert}: a quiet case (an instance with input that must not fire)`)
  }
})

t.test('every metric the alerts read is one the processes export (as docs/operations.md lists them)', async (t) => {
  const ops = readFileSync(fileURLToPath(new URL('../docs/operations.md', import.meta.url)), 'utf8')
  for (const r of rules) {
    for (const name of new Set(r.expr.match(/portcullis_[a-z_]+/g) ?? [])) {
      const base = name.replace(/_(count|bucket|sum)$/, '')
      t.ok(ops.includes(`\`${base}`), `${r.alert}: ${base} is listed in docs/operations.md`)
    }
  }
})
