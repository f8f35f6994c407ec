import { spawnSync } from 'node:child_process'
import t from 'tap'
import { check as authCheck } from '../auth/main.js'
import { check as rotationCheck } from '../rotation/main.js'

// `--check` of the auth service and the rotation worker (the gateway's: test/gateway-reload.test.ts)

function run (check: (env: Record<string, string>, out: (l: string) => void, err: (l: string) => void) => number, env: Record<string, string>): { code: number, out: string[], err: string[] } {
  const out: string[] = []
  const err: string[] = []
  const code = check(env, (l) => out.push(l), (l) => err.push(l))
  return { code, out, err }
}

for (const [name, check] of [['auth', authCheck], ['rotation', rotationCheck]] as const) {
  t.test(`portcullis ${name} --check: ok for the defaults and a full valid set; every problem otherwise`, async (t) => {
    t.same(run(check, {}), { code: 0, out: ['ok'], err: [] }, 'the defaults')
    t.same(run(check, { DATABASE_URL: 'postgres://u:p@db.example:5432/portcullis', PORTCULLIS_KEY_SECRETS: `one:${'a'.repeat(40)}`, LOG_LEVEL: 'warn', KEY_ROTATION_PERIOD: '30d' }).out, ['ok'], 'a production-like set')
    const bad = run(check, { LOG_LEVEL: 'loud', DATABASE_URL: 'mysql://x', KEY_PREPUBLISH: 'soon', PORTCULLIS_KEY_SECRETS: 'short' })
    t.equal(bad.code, 1)
    t.same(bad.out, [], 'no ok')
    for (const v of ['LOG_LEVEL', 'DATABASE_URL', 'KEY_PREPUBLISH', 'PORTCULLIS_KEY_SECRETS']) t.ok(bad.err.some((l) => l.includes(v)), `${v} named in ${JSON.stringify(bad.err)}`)
    t.match(bad.err[0], /4 problems/)
    // a timing rule between two valid variables
    const rule = run(check, { KEY_ROTATION_PERIOD: '1h', KEY_PREPUBLISH: '2h' })
    t.equal(rule.code, 1, `timing rule: ${JSON.stringify(rule.err)}`)
  })
}

t.test('portcullis rotation --check: a bad schedule; auth --check: a bad port', async (t) => {
  t.match(run(rotationCheck, { ROTATION_SCHEDULE: 'every so often' }).err.join('\n'), /ROTATION_SCHEDULE/)
  t.match(run(authCheck, { AUTH_PORT: 'eighty', AUTH_ADMIN_PORT: '99999' }).err.join('\n'), /AUTH_PORT[\s\S]*AUTH_ADMIN_PORT|AUTH_ADMIN_PORT[\s\S]*AUTH_PORT/)
})

t.test('the commands: exit codes and output of portcullis auth|rotation|gateway --check', async (t) => {
  const cli = (args: string[], env: Record<string, string>): ReturnType<typeof spawnSync> =>
    spawnSync(process.execPath, ['--import', 'tsx', 'cli/portcullis.ts', ...args], { env: { PATH: process.env.PATH ?? '', ...env }, encoding: 'utf8', timeout: 60_000 })
  for (const cmd of ['auth', 'rotation']) {
    const ok = cli([cmd, '--check'], {})
    t.equal(ok.status, 0, `${cmd} --check: exit 0`)
    t.equal(String(ok.stdout).trim(), 'ok')
    const bad = cli([cmd, '--check'], { LOG_LEVEL: 'loud' })
    t.equal(bad.status, 1, `${cmd} --check with a bad variable: exit 1`)
    t.match(String(bad.stderr), /LOG_LEVEL/)
    t.equal(String(bad.stdout), '', 'nothing on stdout')
  }
  const gw = cli(['gateway', '--check', 'gateway/routes.example.yaml'], {})
  t.equal(gw.status, 0, `gateway --check on the example route file: ${String(gw.stderr)}`)
  t.equal(String(gw.stdout).trim(), 'ok')
})
