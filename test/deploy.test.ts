import { spawnSync } from 'node:child_process'
import { chmodSync, cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { basename, dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Cron } from 'croner'
import Fastify, { type FastifyInstance } from 'fastify'
import { Deployment } from 'kubernetes-models/apps/v1'
import { CronJob } from 'kubernetes-models/batch/v1'
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1'
import { ConfigMap, Namespace, Secret, Service } from 'kubernetes-models/v1'
import pino from 'pino'
import t from 'tap'
import { parse as parseYaml, parseAllDocuments } from 'yaml'
import { admin as adminPlugin, promClient } from '@portcullis/metrics'
import { AUTH_PROCESS_ENV, authSettingsFromEnv, DEFAULT_AUTH_ADMIN_PORT, DEFAULT_AUTH_PORT } from '../auth/config.js'
import { help as authHelp } from '../auth/main.js'
import { COMMANDS } from '../cli/commands.js'
import { loadGatewayConfig } from '../gateway/config.js'
import { check as gatewayCheck, DEFAULT_GATEWAY_ADMIN_PORT, DEFAULT_GATEWAY_PORT, GATEWAY_PROCESS_ENV, help as gatewayHelp, runtimeOptions, settingsFromEnv } from '../gateway/main.js'
import { GatewayRuntime } from '../gateway/runtime.js'
import { DrainState } from '../lib/drain.js'
import { processEnvRows, type Env, type ProcessEnv } from '../lib/env.js'
import { DEFAULT_METRICS_PORT, ROTATION_PROCESS_ENV, rotationConfigFromEnv } from '../rotation/config.js'
import { help as rotationHelp } from '../rotation/main.js'
import { buildService, buildServiceAdmin } from '../services/bootstrap.js'
import { DEFAULT_ADMIN_PORTS, DEFAULT_PORTS, SERVICE_KINDS, SERVICE_PROCESS_ENV, serviceConfigFromEnv, type ServiceKind } from '../services/config.js'
import { help as servicesHelp } from '../services/main.js'
import { DEFAULT_KEY_TIMINGS } from '../store/key-timings.js'
import { loadKeySecrets } from '../store/secrets.js'
import { authFixture } from './helpers/auth-fixture.js'
import { testBackends } from './helpers/backends.js'

// deploy/ (Kubernetes manifests, systemd units), the Dockerfile and .dockerignore against the code:
// every command, subcommand, flag, environment variable, port and probe path they use must exist in
// the CLI and the processes, read from the code itself (env tables, --help texts, config parsers,
// the admin apps' routes), so that the files cannot drift. Each checker is also run on broken copies
// of the files: a check that passes them is no check. The Kubernetes objects are validated against
// the Kubernetes API's OpenAPI schemas by kubernetes-models (offline, its schemas ship in the package).

const ROOT = fileURLToPath(new URL('..', import.meta.url))
const K8S_DIR = join(ROOT, 'deploy/kubernetes')
const SYSTEMD_DIR = join(ROOT, 'deploy/systemd')
/** deploy/systemd/etc/portcullis holds what the units read from /etc/portcullis. */
const SYSTEMD_ETC = join(SYSTEMD_DIR, 'etc/portcullis')
const PKG = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as {
  version: string, bin: Record<string, string>, scripts: Record<string, string>, workspaces: string[],
  dependencies: Record<string, string>, allowScripts: Record<string, boolean>, engines: { node: string }
}
const BIN = Object.keys(PKG.bin)[0]!
const BIN_PATH = PKG.bin[BIN]!.replace(/^\.\//, '')
const IMAGE = `portcullis:${PKG.version}`
/** Where the Dockerfile links the bin, and where the systemd units run it from. */
const INSTALLED_BIN = `/usr/local/bin/${BIN}`
/** A monitoring stack's ports on the same host: Prometheus, Pushgateway, Grafana, OpenTelemetry's Prometheus exporter. */
const MONITORING_PORTS = new Map([[9090, 'Prometheus'], [9091, 'Pushgateway'], [3000, 'Grafana'], [9464, 'OpenTelemetry Prometheus exporter']])

type Obj = Record<string, any> // eslint-disable-line @typescript-eslint/no-explicit-any

// ---------------------------------------------------------------------------------------------
// The processes, as the code describes them
// ---------------------------------------------------------------------------------------------

type Role = 'public' | 'admin'
interface Listener { role: Role, hostSetting: string, portSetting: string, host: string, port: number }

interface ProcessModel {
  env: ProcessEnv
  help: string
  /** Positional arguments after the command: problems. */
  positional (rest: string[]): string[]
  /** Its listeners under `env`, from its own config parser (which throws naming a bad setting). */
  listeners (env: Env, flags: string[]): Listener[]
  /** Seconds from SIGTERM to the end of the drain delay plus the gateway's own grace. */
  stopSeconds (env: Env): number
  /** Does its admin listener answer GET `path`? (the real admin app's routes) */
  serves (path: string, rest: string[]): boolean
}

const apps: FastifyInstance[] = []
const routeServed = (app: FastifyInstance) => (path: string): boolean => app.hasRoute({ method: 'GET', url: path })

// The admin apps, built by the code that builds them for the processes.
const backend = await (await testBackends())[0]!.open()
const auth = await authFixture(backend)
apps.push(auth.service.app, auth.service.admin)
const serviceAdmins = new Map<ServiceKind, (path: string) => boolean>()
for (const kind of SERVICE_KINDS) {
  const app = await buildService(serviceConfigFromEnv(kind, { AUTH_ISSUER: 'http://127.0.0.1:9' }), { logger: false, defaultMetrics: false })
  const adminApp = await buildServiceAdmin(app, new DrainState())
  await adminApp.ready()
  apps.push(app, adminApp)
  serviceAdmins.set(kind, routeServed(adminApp))
}
// The rotation worker's metrics listener is the admin plugin alone (rotation/main.ts metricsServer).
const rotationAdmin = Fastify({ logger: false })
await rotationAdmin.register(adminPlugin, { registries: [new promClient.Registry()] })
await rotationAdmin.ready()
apps.push(rotationAdmin)
const gatewayRoutesFile = join(mkdtempSync(join(tmpdir(), 'portcullis-deploy-')), 'routes.yaml')
writeFileSync(gatewayRoutesFile, 'issuers:\n  - issuer: http://127.0.0.1:9\n    audience: portcullis\nroutes:\n  - { prefix: /x, upstream: "http://127.0.0.1:9" }\n')
const gatewayRuntime = await GatewayRuntime.start({ ...runtimeOptions(settingsFromEnv({ GATEWAY_CONFIG: gatewayRoutesFile, GATEWAY_MEMORY_TUNING: 'false' }), {}), logger: pino({ level: 'silent' }) })
t.teardown(async () => {
  await gatewayRuntime.close()
  for (const app of apps) await app.close()
  await backend.cleanup()
  rmSync(dirname(gatewayRoutesFile), { recursive: true, force: true })
})

const onlyFlags = (command: string) => (rest: string[]): string[] =>
  rest.filter((a) => !a.startsWith('-')).map((a) => `portcullis ${command} takes no argument "${a}"`)

const PROCESSES: Record<string, ProcessModel> = {
  auth: {
    env: AUTH_PROCESS_ENV,
    help: authHelp,
    positional: onlyFlags('auth'),
    listeners: (env) => {
      const c = authSettingsFromEnv(env).config
      return [
        { role: 'public', hostSetting: 'AUTH_HOST', portSetting: 'AUTH_PORT', host: c.host, port: c.port },
        { role: 'admin', hostSetting: 'AUTH_ADMIN_HOST', portSetting: 'AUTH_ADMIN_PORT', host: c.adminHost, port: c.adminPort }
      ]
    },
    stopSeconds: (env) => authSettingsFromEnv(env).config.drainDelay,
    serves: routeServed(auth.service.admin)
  },
  gateway: {
    env: GATEWAY_PROCESS_ENV,
    help: gatewayHelp,
    positional: onlyFlags('gateway'),
    listeners: (env) => {
      const s = settingsFromEnv(env)
      return [
        { role: 'public', hostSetting: 'GATEWAY_HOST', portSetting: 'GATEWAY_PORT', host: s.host, port: s.port },
        { role: 'admin', hostSetting: 'GATEWAY_ADMIN_HOST', portSetting: 'GATEWAY_ADMIN_PORT', host: s.adminHost, port: s.adminPort }
      ]
    },
    stopSeconds: (env) => { const s = settingsFromEnv(env); return s.drainDelay + s.shutdownGrace },
    serves: routeServed(gatewayRuntime.admin)
  },
  rotation: {
    env: ROTATION_PROCESS_ENV,
    help: rotationHelp,
    positional: onlyFlags('rotation'),
    listeners: (env, flags) => {
      const c = rotationConfigFromEnv(env)
      return flags.includes('--once') ? [] : [{ role: 'admin', hostSetting: 'ROTATION_METRICS_HOST', portSetting: 'ROTATION_METRICS_PORT', host: c.metricsHost, port: c.metricsPort }]
    },
    stopSeconds: () => 0,
    serves: routeServed(rotationAdmin)
  },
  services: {
    env: SERVICE_PROCESS_ENV,
    help: servicesHelp,
    positional: (rest) => {
      const pos = rest.filter((a) => !a.startsWith('-'))
      if (pos.length !== 1 || !(SERVICE_KINDS as readonly string[]).includes(pos[0]!)) return [`portcullis services takes one of ${SERVICE_KINDS.join(', ')}, got "${pos.join(' ')}"`]
      return []
    },
    listeners: (env, _flags) => {
      const kind = (env.__KIND ?? 'user') as ServiceKind
      const c = serviceConfigFromEnv(kind, env)
      const upper = kind.toUpperCase()
      return [
        { role: 'public', hostSetting: 'SERVICE_HOST', portSetting: `${upper}_SERVICE_PORT`, host: c.host, port: c.port },
        { role: 'admin', hostSetting: 'SERVICE_ADMIN_HOST', portSetting: `${upper}_SERVICE_ADMIN_PORT`, host: c.adminHost, port: c.adminPort }
      ]
    },
    stopSeconds: (env) => serviceConfigFromEnv((env.__KIND ?? 'user') as ServiceKind, env).drainDelay,
    serves: (path, rest) => serviceAdmins.get(rest[0] as ServiceKind)?.(path) ?? false
  }
}

/** A whole word of a help text: `--once` in `[--once]`, `AUTH_PORT` in `  AUTH_PORT  ...`. */
const inHelp = (help: string, word: string): boolean => new RegExp(`(^|[\\s\\[(,])${word.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}(?=[\\s\\])=,]|$)`, 'm').test(help)

interface Invocation {
  command: string
  rest: string[]
  flags: string[]
  model: ProcessModel
}

/** `portcullis <command> [args]` as a manifest, unit or Dockerfile gives it: the problems, and what runs. */
function checkInvocation (where: string, argv: readonly string[]): { problems: string[], inv?: Invocation } {
  const [command, ...rest] = argv
  if (command === undefined) return { problems: [`${where}: no portcullis command`] }
  if (!COMMANDS.some((c) => c.name === command)) return { problems: [`${where}: "${command}" is not a portcullis command (${COMMANDS.map((c) => c.name).join(', ')})`] }
  const model = PROCESSES[command]
  if (model === undefined) return { problems: [`${where}: portcullis ${command} is a tool, not a process to deploy`] }
  const flags = rest.filter((a) => a.startsWith('-'))
  const problems = [
    ...flags.filter((f) => !inHelp(model.help, f.split('=')[0]!)).map((f) => `${where}: portcullis ${command} has no option ${f} (see its --help)`),
    ...model.positional(rest).map((p) => `${where}: ${p}`)
  ]
  return { problems, inv: { command, rest: rest.filter((a) => !a.startsWith('-')), flags, model } }
}

/** Environment variable names the process does not read (not in its env table, or not in its --help). */
function unknownEnv (where: string, inv: Invocation, names: Iterable<string>): string[] {
  const known = new Set(processEnvRows(inv.model.env).map(([n]) => n))
  const out: string[] = []
  for (const name of names) {
    if (!known.has(name)) out.push(`${where}: ${name} is not read by portcullis ${inv.command} (not in its environment table)`)
    else if (!inHelp(inv.model.help, name)) out.push(`${where}: ${name} is missing from portcullis ${inv.command} --help`)
  }
  return out
}

/** The listeners under `env`, or the config parser's own complaint. */
function listenersOf (where: string, inv: Invocation, env: Env): { problems: string[], listeners: Listener[] } {
  try {
    return { problems: [], listeners: inv.model.listeners({ ...env, __KIND: inv.rest[0] }, inv.flags) }
  } catch (err) {
    return { problems: [`${where}: portcullis ${inv.command} refuses its environment: ${(err as Error).message}`], listeners: [] }
  }
}

/** http://host:port[/path] -> host and port (80 when absent). */
function hostPort (url: string): { host: string, port: number } {
  const u = new URL(url)
  return { host: u.hostname, port: u.port === '' ? 80 : Number(u.port) }
}

/** Runs `portcullis gateway --check <file>` in-process: the problems it prints. */
async function gatewayFileProblems (where: string, file: string, env: Env): Promise<string[]> {
  const lines: string[] = []
  const code = await gatewayCheck(file, env, () => {}, (l) => { lines.push(l) })
  return code === 0 ? [] : [`${where}: portcullis gateway --check refuses it: ${lines.join(' | ')}`]
}

// ---------------------------------------------------------------------------------------------
// Kubernetes
// ---------------------------------------------------------------------------------------------

interface Doc { file: string, obj: Obj }

function readManifests (): Doc[] {
  const docs: Doc[] = []
  for (const file of readdirSync(K8S_DIR).filter((f) => f.endsWith('.yaml')).sort()) {
    for (const d of parseAllDocuments(readFileSync(join(K8S_DIR, file), 'utf8'))) {
      if (d.errors.length > 0) throw new Error(`${file}: ${d.errors.map((e) => e.message).join('; ')}`)
      const obj = d.toJS() as Obj | null
      if (obj !== null) docs.push({ file, obj })
    }
  }
  return docs
}

const name = (d: Doc): string => `${d.file} ${d.obj.kind as string}/${d.obj.metadata?.name as string}`
const podTemplate = (d: Doc): Obj | undefined =>
  d.obj.kind === 'Deployment' ? d.obj.spec?.template : d.obj.kind === 'CronJob' ? d.obj.spec?.jobTemplate?.spec?.template : undefined
const matches = (selector: Obj | undefined, labels: Obj | undefined): boolean =>
  selector !== undefined && Object.keys(selector).length > 0 && Object.entries(selector).every(([k, v]) => labels?.[k] === v)

interface Workload { doc: Doc, inv: Invocation, env: Env, listeners: Listener[], ports: Map<string, number>, replicas: number }

/** Every problem of the Kubernetes manifests against the code (an empty list when they agree). */
async function kubernetesProblems (docs: Doc[]): Promise<string[]> {
  const problems: string[] = []
  const secrets = new Map<string, Obj>(docs.filter((d) => d.obj.kind === 'Secret').map((d) => [d.obj.metadata.name, { ...d.obj.data, ...d.obj.stringData }]))
  const configMaps = new Map<string, Obj>(docs.filter((d) => d.obj.kind === 'ConfigMap').map((d) => [d.obj.metadata.name, d.obj.data ?? {}]))
  const workloads: Workload[] = []
  const routeFiles: Array<{ where: string, text: string, env: Env }> = []

  for (const doc of docs.filter((d) => podTemplate(d) !== undefined)) {
    const where = name(doc)
    const pod = podTemplate(doc)!
    const spec = pod.spec as Obj
    if (spec.securityContext?.runAsNonRoot !== true) problems.push(`${where}: the pod must set securityContext.runAsNonRoot`)
    const containers = spec.containers as Obj[]
    if (containers.length !== 1) { problems.push(`${where}: one container expected`); continue }
    const c = containers[0]!
    const at = `${where} container ${c.name as string}`
    if (c.image !== IMAGE) problems.push(`${at}: image ${c.image as string}, expected ${IMAGE} (package.json version)`)
    if (JSON.stringify(c.command) !== JSON.stringify([BIN])) problems.push(`${at}: command must be ["${BIN}"] (the package's bin, linked by the Dockerfile)`)
    const { problems: argProblems, inv } = checkInvocation(at, (c.args ?? []) as string[])
    problems.push(...argProblems)
    if (inv === undefined) continue

    // environment: names the process reads, values from the manifest or its Secret
    const env: Env = {}
    for (const e of (c.env ?? []) as Obj[]) {
      const ref = e.valueFrom?.secretKeyRef ?? e.valueFrom?.configMapKeyRef
      if (ref !== undefined) {
        const source = e.valueFrom.secretKeyRef !== undefined ? secrets.get(ref.name) : configMaps.get(ref.name)
        if (source === undefined) problems.push(`${at}: env ${e.name as string} refers to ${ref.name as string}, which no manifest defines`)
        else if (!(ref.key in source)) problems.push(`${at}: env ${e.name as string} refers to key ${ref.key as string}, which ${ref.name as string} does not hold`)
        else env[e.name] = String(source[ref.key])
      } else {
        env[e.name] = String(e.value)
      }
    }
    problems.push(...unknownEnv(at, inv, Object.keys(env)))
    const { problems: envProblems, listeners } = listenersOf(at, inv, env)
    problems.push(...envProblems)

    // ports: each listener declared, each declared port a listener, reachable from outside the pod
    const ports = new Map<string, number>(((c.ports ?? []) as Obj[]).map((p) => [String(p.name), Number(p.containerPort)]))
    for (const l of listeners) {
      if (![...ports.values()].includes(l.port)) problems.push(`${at}: portcullis ${inv.command} listens on ${l.portSetting}=${l.port}, which no containerPort declares`)
      if (l.host !== '0.0.0.0' && l.host !== '::') problems.push(`${at}: ${l.hostSetting} is ${l.host}: the kubelet's probes and other pods cannot reach the ${l.role} listener (set it to 0.0.0.0)`)
    }
    for (const [portName, port] of ports) {
      if (!listeners.some((l) => l.port === port)) problems.push(`${at}: containerPort ${portName}=${port} is not a port portcullis ${inv.command} listens on (${listeners.map((l) => `${l.portSetting}=${l.port}`).join(', ') || 'none'})`)
    }
    const listenerAt = (port: unknown): Listener | undefined => {
      const n = typeof port === 'string' ? ports.get(port) : Number(port)
      return listeners.find((l) => l.port === n)
    }

    // probes: on the admin listener, at a path it serves
    const isDaemon = doc.obj.kind === 'Deployment'
    for (const probe of ['readinessProbe', 'livenessProbe', 'startupProbe']) {
      const p = c[probe] as Obj | undefined
      if (p === undefined) {
        if (isDaemon && probe !== 'startupProbe') problems.push(`${at}: no ${probe}`)
        continue
      }
      const get = p.httpGet as Obj | undefined
      if (get === undefined) { problems.push(`${at}: ${probe} must be an httpGet`); continue }
      const l = listenerAt(get.port)
      if (l === undefined) problems.push(`${at}: ${probe} port ${String(get.port)} is no listener of portcullis ${inv.command}`)
      else if (l.role !== 'admin') problems.push(`${at}: ${probe} goes to the ${l.role} listener (${l.portSetting}); probes belong on the admin listener`)
      else if (!inv.model.serves(String(get.path), inv.rest)) problems.push(`${at}: ${probe} path ${String(get.path)} is not served by the admin listener of portcullis ${inv.command}`)
    }
    if (isDaemon && probeExpect(c.readinessProbe, '/health/ready') === false) problems.push(`${at}: readinessProbe must ask /health/ready`)
    if (isDaemon && probeExpect(c.livenessProbe, '/health/live') === false) problems.push(`${at}: livenessProbe must ask /health/live`)

    // Prometheus: the admin listener's /metrics
    const ann = (pod.metadata?.annotations ?? {}) as Obj
    if (isDaemon) {
      if (ann['prometheus.io/scrape'] !== 'true') problems.push(`${at}: no prometheus.io/scrape annotation`)
      const l = listenerAt(Number(ann['prometheus.io/port']))
      if (l?.role !== 'admin') problems.push(`${at}: prometheus.io/port ${String(ann['prometheus.io/port'])} is not the admin listener's port`)
      if (!inv.model.serves(String(ann['prometheus.io/path'] ?? '/metrics'), inv.rest)) problems.push(`${at}: prometheus.io/path ${String(ann['prometheus.io/path'])} is not served by the admin listener`)
    }

    // resources, and time to stop
    if (c.resources?.requests?.cpu === undefined || c.resources?.requests?.memory === undefined) problems.push(`${at}: resources.requests needs cpu and memory`)
    if (isDaemon) {
      const grace = Number(spec.terminationGracePeriodSeconds ?? 30)
      let stop = 0
      try { stop = inv.model.stopSeconds({ ...env, __KIND: inv.rest[0] }) } catch { /* reported with the listeners */ }
      if (grace <= stop) problems.push(`${at}: terminationGracePeriodSeconds ${grace} is not longer than the process's drain and shutdown grace (${stop} s): it would be killed mid-drain`)
    }

    // the gateway's route file: mounted from a ConfigMap at GATEWAY_CONFIG
    if (inv.command === 'gateway') {
      const file = env.GATEWAY_CONFIG
      const mount = ((c.volumeMounts ?? []) as Obj[]).find((m) => file?.startsWith(`${m.mountPath as string}/`) === true)
      const volume = ((spec.volumes ?? []) as Obj[]).find((v) => v.name === mount?.name)
      const data = configMaps.get(volume?.configMap?.name)
      const key = file === undefined || mount === undefined ? undefined : file.slice(String(mount.mountPath).length + 1)
      if (data === undefined || key === undefined || typeof data[key] !== 'string') problems.push(`${at}: GATEWAY_CONFIG ${file ?? '(unset)'} is not a file of a mounted ConfigMap`)
      else routeFiles.push({ where: `${at} GATEWAY_CONFIG`, text: data[key], env })
    }
    const replicas = doc.obj.kind === 'Deployment' ? Number(doc.obj.spec.replicas ?? 1) : 0
    if (doc.obj.kind === 'Deployment' && !matches(doc.obj.spec.selector?.matchLabels, pod.metadata?.labels)) problems.push(`${where}: selector does not match the pod labels`)
    workloads.push({ doc, inv, env, listeners, ports, replicas })
  }

  // what must be deployed, and how
  const runs = (kind: string, argv: string[]): Workload | undefined =>
    workloads.find((w) => w.doc.obj.kind === kind && JSON.stringify([w.inv.command, ...w.inv.rest, ...w.inv.flags]) === JSON.stringify(argv))
  for (const argv of [['gateway'], ['auth'], ...SERVICE_KINDS.map((k) => ['services', k]), ['rotation']]) {
    if (runs('Deployment', argv) === undefined) problems.push(`no Deployment runs portcullis ${argv.join(' ')}`)
  }
  if (runs('CronJob', ['rotation', '--once']) === undefined) problems.push('no CronJob runs portcullis rotation --once')
  for (const d of docs.filter((x) => x.obj.kind === 'CronJob')) {
    const next = new Cron(String(d.obj.spec.schedule), { paused: true }).nextRuns(3)
    const gap = Math.max(...next.slice(1).map((n, i) => n.getTime() - next[i]!.getTime())) / 1000
    if (gap >= DEFAULT_KEY_TIMINGS.prePublish) problems.push(`${name(d)}: schedule "${String(d.obj.spec.schedule)}" runs every ${gap} s, not more often than KEY_PREPUBLISH (${DEFAULT_KEY_TIMINGS.prePublish} s)`)
  }

  // Services: select one workload and reach its public listener
  const services = new Map<string, { workload: Workload, ports: Map<number, Listener> }>()
  for (const d of docs.filter((x) => x.obj.kind === 'Service')) {
    const selected = workloads.filter((w) => w.doc.obj.kind === 'Deployment' && matches(d.obj.spec.selector, podTemplate(w.doc)!.metadata?.labels))
    if (selected.length !== 1) { problems.push(`${name(d)}: its selector matches ${selected.length} Deployments, not one`); continue }
    const w = selected[0]!
    const ports = new Map<number, Listener>()
    for (const p of d.obj.spec.ports as Obj[]) {
      const target = typeof p.targetPort === 'string' ? w.ports.get(p.targetPort) : Number(p.targetPort ?? p.port)
      const l = w.listeners.find((x) => x.port === target)
      if (l === undefined) problems.push(`${name(d)}: port ${String(p.port)} targets ${String(p.targetPort)}, which is no listener of ${name(w.doc)}`)
      else if (l.role !== 'public') problems.push(`${name(d)}: port ${String(p.port)} exposes the admin listener (${l.portSetting})`)
      else ports.set(Number(p.port), l)
    }
    services.set(d.obj.metadata.name, { workload: w, ports })
  }
  const reaches = (where: string, url: string, argv?: string[]): string[] => {
    const { host, port } = hostPort(url)
    const s = services.get(host)
    if (s === undefined) return [`${where}: ${url} names no Service of the manifests`]
    if (!s.ports.has(port)) return [`${where}: ${url}: Service ${host} has no port ${port}`]
    const ran = [s.workload.inv.command, ...s.workload.inv.rest]
    return argv === undefined || JSON.stringify(ran) === JSON.stringify(argv) ? [] : [`${where}: ${url} reaches portcullis ${ran.join(' ')}, not portcullis ${argv.join(' ')}`]
  }

  // the issuer: auth's AUTH_ISSUER is what every verifier trusts, and reaches auth
  const authWorkload = runs('Deployment', ['auth'])
  let issuer: string | undefined
  if (authWorkload !== undefined) {
    try { issuer = authSettingsFromEnv(authWorkload.env).config.issuer } catch { /* reported */ }
    if (issuer !== undefined) problems.push(...reaches(`${name(authWorkload.doc)} AUTH_ISSUER`, issuer, ['auth']))
  }
  for (const w of workloads.filter((x) => x.inv.command === 'services')) {
    let c
    try { c = serviceConfigFromEnv(w.inv.rest[0] as ServiceKind, w.env) } catch { continue }
    if (c.issuer !== issuer) problems.push(`${name(w.doc)}: AUTH_ISSUER ${c.issuer} is not the auth service's (${issuer ?? 'unset'})`)
    if (c.kind === 'order') {
      problems.push(...reaches(`${name(w.doc)} USER_SERVICE_URL`, c.userServiceUrl, ['services', 'user']))
      problems.push(...reaches(`${name(w.doc)} PRODUCT_SERVICE_URL`, c.productServiceUrl, ['services', 'product']))
    }
  }
  for (const rf of routeFiles) {
    const dir = mkdtempSync(join(tmpdir(), 'portcullis-routes-'))
    try {
      const file = join(dir, 'routes.yaml')
      // --check builds the gateway, which starts fetching the issuers' JWKS: the cluster's names
      // become 127.0.0.1 for it, so that the test looks up no name (the file is read as is below)
      writeFileSync(file, rf.text.replace(/http:\/\/portcullis-[a-z-]+:/g, 'http://127.0.0.1:'))
      const fileProblems = await gatewayFileProblems(rf.where, file, rf.env)
      problems.push(...fileProblems)
      if (fileProblems.length > 0) continue
      writeFileSync(file, rf.text)
      const config = loadGatewayConfig(file)
      if (issuer !== undefined && !config.issuers.some((i) => i.issuer === issuer)) problems.push(`${rf.where}: no issuer is the auth service's AUTH_ISSUER ${issuer}`)
      for (const r of config.routes) problems.push(...reaches(`${rf.where} route ${r.name}`, r.upstream, r.name === 'auth' ? ['auth'] : undefined))
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  }

  // PodDisruptionBudgets: one per long-running, load-balanced Deployment, that allows an eviction
  for (const w of workloads.filter((x) => x.doc.obj.kind === 'Deployment' && x.inv.command !== 'rotation')) {
    const pdbs = docs.filter((d) => d.obj.kind === 'PodDisruptionBudget' && matches(d.obj.spec.selector?.matchLabels, podTemplate(w.doc)!.metadata?.labels))
    if (pdbs.length !== 1) problems.push(`${name(w.doc)}: ${pdbs.length} PodDisruptionBudgets select it, not one`)
    for (const d of pdbs) {
      if (!(Number(d.obj.spec.minAvailable) < w.replicas)) problems.push(`${name(d)}: minAvailable ${String(d.obj.spec.minAvailable)} with ${w.replicas} replicas allows no eviction (a node drain would hang)`)
    }
  }
  return problems
}

function probeExpect (probe: Obj | undefined, path: string): boolean | undefined {
  return probe?.httpGet === undefined ? undefined : probe.httpGet.path === path
}

/** kustomization.yaml: its resources are the manifests (the daemon variant commented out), its image the package's version. */
function kustomizationProblems (k: Obj, files: string[]): string[] {
  const problems: string[] = []
  const listed = (k.resources ?? []) as string[]
  for (const f of listed) if (!files.includes(f)) problems.push(`kustomization.yaml: resource ${f} does not exist`)
  for (const f of files) {
    if (f !== 'kustomization.yaml' && !listed.includes(f) && f !== 'rotation-daemon.yaml') problems.push(`kustomization.yaml: ${f} is not among its resources`)
  }
  if (listed.includes('rotation-daemon.yaml') === listed.includes('rotation-cronjob.yaml')) problems.push('kustomization.yaml: list one of rotation-cronjob.yaml and rotation-daemon.yaml')
  const image = ((k.images ?? []) as Obj[]).find((i) => i.name === 'portcullis')
  if (String(image?.newTag) !== PKG.version) problems.push(`kustomization.yaml: images newTag ${String(image?.newTag)} is not the package version ${PKG.version}`)
  return problems
}

// ---------------------------------------------------------------------------------------------
// systemd
// ---------------------------------------------------------------------------------------------

type Unit = Map<string, Map<string, string[]>>

function parseUnit (text: string): Unit {
  const unit: Unit = new Map()
  let section: Map<string, string[]> | undefined
  for (const raw of text.split('\n')) {
    const line = raw.trim()
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue
    const s = /^\[(.+)\]$/.exec(line)
    if (s !== null) { section = new Map(); unit.set(s[1]!, section); continue }
    const eq = line.indexOf('=')
    if (section === undefined || eq < 0) throw new Error(`not a unit line: ${line}`)
    const key = line.slice(0, eq).trim()
    section.set(key, [...(section.get(key) ?? []), line.slice(eq + 1).trim()])
  }
  return unit
}

/** KEY=VALUE lines of an EnvironmentFile (comments and blank lines skipped). */
function parseEnvFile (text: string): Env {
  const env: Env = {}
  for (const raw of text.split('\n')) {
    const line = raw.trim()
    if (line === '' || line.startsWith('#')) continue
    const m = /^([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(line)
    if (m === null) throw new Error(`not an environment line: ${line}`)
    env[m[1]!] = m[2]!.replace(/^"(.*)"$/, '$1')
  }
  return env
}

const one = (u: Unit, section: string, key: string): string | undefined => u.get(section)?.get(key)?.at(-1)

/** The units and the files they read (/etc/portcullis/X is deploy/systemd/etc/portcullis/X) against the code. */
async function systemdProblems (units: Map<string, string>, etc: Map<string, string>): Promise<string[]> {
  const problems: string[] = []
  const parsed = new Map<string, Unit>()
  for (const [file, text] of units) {
    try { parsed.set(file, parseUnit(text)) } catch (err) { problems.push(`${file}: ${(err as Error).message}`) }
  }
  const running: Array<{ file: string, inv: Invocation, env: Env, listeners: Listener[] }> = []
  for (const [file, u] of parsed) {
    if (!file.endsWith('.service')) continue
    const exec = (one(u, 'Service', 'ExecStart') ?? '').split(/\s+/)
    if (exec[0] !== INSTALLED_BIN) { problems.push(`${file}: ExecStart must run ${INSTALLED_BIN} (the bin the install links)`); continue }
    const { problems: argProblems, inv } = checkInvocation(file, exec.slice(1))
    problems.push(...argProblems)
    if (inv === undefined) continue
    const env: Env = {}
    for (const ef of u.get('Service')?.get('EnvironmentFile') ?? []) {
      const path = ef.replace(/^-/, '')
      const text = path.startsWith('/etc/portcullis/') ? etc.get(basename(path)) : undefined
      if (text === undefined) { problems.push(`${file}: EnvironmentFile ${path} is not shipped in deploy/systemd/etc/portcullis`); continue }
      Object.assign(env, parseEnvFile(text))
    }
    for (const e of u.get('Service')?.get('Environment') ?? []) Object.assign(env, parseEnvFile(e))
    problems.push(...unknownEnv(file, inv, Object.keys(env)))
    const { problems: envProblems, listeners } = listenersOf(file, inv, env)
    problems.push(...envProblems)
    const user = one(u, 'Service', 'User')
    if (user === undefined || user === 'root' || user === '0') problems.push(`${file}: runs as root (set User=)`)
    const type = one(u, 'Service', 'Type')
    const once = inv.flags.includes('--once')
    if (once && type !== 'oneshot') problems.push(`${file}: a one-tick run is Type=oneshot`)
    if (!once && type !== 'exec' && type !== 'simple') problems.push(`${file}: a daemon is Type=exec (or simple), not ${type ?? 'unset'}`)
    if (!once) {
      const timeout = Number(/^(\d+)s?$/.exec(one(u, 'Service', 'TimeoutStopSec') ?? '90')?.[1] ?? Number.NaN)
      let stop = 0
      try { stop = inv.model.stopSeconds(env) } catch { /* reported with the listeners */ }
      if (!(timeout > stop)) problems.push(`${file}: TimeoutStopSec ${String(one(u, 'Service', 'TimeoutStopSec'))} is not longer than the drain and shutdown grace (${stop} s)`)
    }
    running.push({ file, inv, env, listeners })
    if (inv.command === 'gateway') {
      const path = env.GATEWAY_CONFIG
      const text = path?.startsWith('/etc/portcullis/') === true ? etc.get(basename(path)) : undefined
      if (text === undefined) { problems.push(`${file}: GATEWAY_CONFIG ${path ?? '(unset)'} is not shipped in deploy/systemd/etc/portcullis`); continue }
      const dir = mkdtempSync(join(tmpdir(), 'portcullis-routes-'))
      try {
        writeFileSync(join(dir, 'routes.yaml'), text)
        problems.push(...await gatewayFileProblems(`${file} GATEWAY_CONFIG`, join(dir, 'routes.yaml'), env))
      } finally {
        rmSync(dir, { recursive: true, force: true })
      }
    }
  }
  // one machine: every listener on a port of its own, none a monitoring stack's
  const seen = new Map<number, string>()
  for (const r of running) {
    for (const l of r.listeners) {
      const other = seen.get(l.port)
      if (other !== undefined && other !== r.file) problems.push(`${r.file}: ${l.portSetting}=${l.port} is also ${other}'s`)
      seen.set(l.port, r.file)
      const mon = MONITORING_PORTS.get(l.port)
      if (mon !== undefined) problems.push(`${r.file}: ${l.portSetting}=${l.port} is ${mon}'s port`)
    }
  }
  // the gateway's issuer is auth's AUTH_ISSUER, and its auth route reaches auth's public listener
  const gw = running.find((r) => r.inv.command === 'gateway')
  const au = running.find((r) => r.inv.command === 'auth')
  if (gw !== undefined && au !== undefined) {
    const text = etc.get(basename(gw.env.GATEWAY_CONFIG ?? ''))
    if (text !== undefined) {
      const file = parseYaml(text) as { issuers?: Array<{ issuer: string }>, routes?: Array<{ name: string, upstream: string }> }
      let issuer: string | undefined
      try { issuer = authSettingsFromEnv(au.env).config.issuer } catch { /* reported */ }
      if (issuer !== undefined && !(file.issuers ?? []).some((i) => i.issuer === issuer)) problems.push(`${gw.file} GATEWAY_CONFIG: no issuer is auth's AUTH_ISSUER ${issuer}`)
      const authPublic = au.listeners.find((l) => l.role === 'public')
      for (const r of file.routes ?? []) {
        const { port } = hostPort(r.upstream)
        if (r.name === 'auth' && port !== authPublic?.port) problems.push(`${gw.file} GATEWAY_CONFIG: route auth goes to port ${port}, auth listens on ${String(authPublic?.port)}`)
      }
    }
  }
  for (const [file, u] of parsed) {
    if (!file.endsWith('.timer')) continue
    const target = one(u, 'Timer', 'Unit') ?? file.replace(/\.timer$/, '.service')
    const svc = parsed.get(target)
    if (svc === undefined) { problems.push(`${file}: Unit=${target} is not shipped`); continue }
    if (one(svc, 'Service', 'ExecStart') !== `${INSTALLED_BIN} rotation --once`) problems.push(`${file}: starts ${target}, which does not run ${BIN} rotation --once`)
    if (one(u, 'Timer', 'OnCalendar') === undefined) problems.push(`${file}: no OnCalendar`)
  }
  return problems
}

function readSystemd (): { units: Map<string, string>, etc: Map<string, string> } {
  const units = new Map(readdirSync(SYSTEMD_DIR).filter((f) => /\.(service|timer)$/.test(f)).map((f) => [f, readFileSync(join(SYSTEMD_DIR, f), 'utf8')]))
  const etc = new Map(readdirSync(SYSTEMD_ETC).map((f) => [f, readFileSync(join(SYSTEMD_ETC, f), 'utf8')]))
  return { units, etc }
}

// ---------------------------------------------------------------------------------------------
// The Dockerfile and .dockerignore
// ---------------------------------------------------------------------------------------------

interface Instruction { op: string, args: string, line: number }

function parseDockerfile (text: string): Instruction[] {
  const out: Instruction[] = []
  let buf = ''
  let start = 0
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim()
    if (buf === '' && (line === '' || line.startsWith('#'))) return
    if (buf === '') start = i + 1
    if (line.startsWith('#')) return
    if (line.endsWith('\\')) { buf += `${line.slice(0, -1)} `; return }
    buf += line
    const m = /^(\w+)\s+([\s\S]*)$/.exec(buf)
    if (m !== null) out.push({ op: m[1]!.toUpperCase(), args: m[2]!.trim(), line: start })
    buf = ''
  })
  return out
}

/** .dockerignore patterns (no negations used) as a path test. */
function dockerIgnored (patterns: string[]): (path: string) => boolean {
  const res = patterns.map((p) => new RegExp(`^${p.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*\*\//g, '(.*/)?').replace(/\*/g, '[^/]*').replace(/\?/g, '[^/]')}(/.*)?$`))
  return (path) => res.some((r) => r.test(path))
}

const npmHelp = new Map<string, string>()
function npmFlagExists (sub: string, flag: string): boolean {
  if (!npmHelp.has(sub)) {
    const r = spawnSync('npm', [sub, '--help'], { encoding: 'utf8' })
    npmHelp.set(sub, `${r.stdout}${r.stderr}`)
  }
  return inHelp(npmHelp.get(sub)!, flag.split('=')[0]!)
}

/** What `npm run build` makes (the tsconfig's outDir, each plugin's dist/), beside the sources. */
function madeByBuild (path: string): boolean {
  const build = JSON.parse(readFileSync(join(ROOT, 'tsconfig.build.json'), 'utf8')) as { compilerOptions: { outDir: string } }
  const buildScript = readFileSync(join(ROOT, 'scripts/build.js'), 'utf8')
  const pkgs = /PACKAGES = \[([^\]]*)\]/.exec(buildScript)?.[1]?.match(/'([^']+)'/g)?.map((s) => s.slice(1, -1)) ?? []
  return path === build.compilerOptions.outDir || pkgs.some((p) => path === `plugins/${p}/dist`)
}

function dockerProblems (text: string, ignoreText: string): string[] {
  const problems: string[] = []
  const ins = parseDockerfile(text)
  const ignored = dockerIgnored(ignoreText.split('\n').map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('#')))
  for (const must of ['node_modules', 'dist', '.git']) if (!ignored(must)) problems.push(`.dockerignore: ${must} is not left out of the build context`)
  const stages: string[] = []
  const knownEnv = new Set(Object.values(PROCESSES).flatMap((p) => processEnvRows(p.env).map(([n]) => n)))
  const engineMajor = Number(/(\d+)/.exec(PKG.engines.node)?.[1])
  let uid: string | undefined
  let user: string | undefined
  const prodWorkspaces = new Set<string>()
  const runtimeCopies = new Set<string>()
  for (const i of ins) {
    const at = `Dockerfile:${i.line}`
    if (i.op === 'FROM') {
      const [image, as, stage] = i.args.split(/\s+/)
      const major = Number(/^node:(\d+)/.exec(image!)?.[1])
      if (!(major >= engineMajor)) problems.push(`${at}: ${image!} is not a Node.js ${engineMajor}+ image (package.json engines ${PKG.engines.node})`)
      stages.push(as?.toUpperCase() === 'AS' ? stage! : '')
    } else if (i.op === 'RUN') {
      for (const cmd of i.args.split('&&').map((s) => s.trim().split(/\s+/))) {
        const [tool, sub, ...rest] = cmd
        if (tool === 'npm' && sub === 'ci') {
          for (const f of rest) if (!npmFlagExists('ci', f)) problems.push(`${at}: npm ci has no option ${f}`)
        } else if (tool === 'npm' && sub === 'run') {
          if (PKG.scripts[rest[0]!] === undefined) problems.push(`${at}: npm run ${rest[0]}: package.json has no such script`)
        } else if (tool === 'npm' && sub === 'rebuild') {
          for (const p of rest) if (PKG.dependencies[p] === undefined || PKG.allowScripts[p] !== true) problems.push(`${at}: npm rebuild ${p}: not a production dependency whose install script the package allows`)
        } else if (tool === 'ln') {
          const [flag, target, link] = [sub, rest[0], rest[1]]
          if (flag !== '-s' || target !== `/app/${BIN_PATH}` || link !== INSTALLED_BIN) problems.push(`${at}: the link must be ${INSTALLED_BIN} -> /app/${BIN_PATH} (package.json bin "${BIN}")`)
        } else if (tool === 'useradd') {
          uid = cmd[cmd.indexOf('--uid') + 1]
        } else if (tool !== 'groupadd' && tool !== 'install') {
          problems.push(`${at}: ${cmd.join(' ')}: not a command this Dockerfile is known to need`)
        }
      }
    } else if (i.op === 'COPY') {
      const parts = i.args.split(/\s+/)
      const from = parts.find((p) => p.startsWith('--from='))?.slice('--from='.length)
      const paths = parts.filter((p) => !p.startsWith('--'))
      const dest = paths.pop()!
      for (const src of paths) {
        if (from === undefined) {
          if (src !== '.' && (!existsSync(join(ROOT, src)) || ignored(src))) problems.push(`${at}: COPY ${src}: not in the build context`)
          const ws = /^plugins\/([^/]+)\/package\.json$/.exec(src)
          if (ws !== null) prodWorkspaces.add(`plugins/${ws[1]!}`)
        } else if (!stages.includes(from)) {
          problems.push(`${at}: COPY --from=${from}: no such stage`)
        } else if (from === 'build') {
          const rel = src.replace(/^\/src\//, '')
          if (existsSync(join(ROOT, rel)) || madeByBuild(rel)) runtimeCopies.add(rel)
          else problems.push(`${at}: COPY ${src}: neither a source nor made by npm run build`)
        } else if (src !== '/app/node_modules') {
          problems.push(`${at}: COPY --from=${from} ${src}: the ${from} stage makes /app/node_modules only`)
        }
      }
      if (dest === undefined || paths.length === 0) problems.push(`${at}: COPY needs a source and a destination`)
    } else if (i.op === 'ENV') {
      for (const [, n] of i.args.matchAll(/([A-Z_][A-Z0-9_]*)=/g)) if (!knownEnv.has(n!)) problems.push(`${at}: ENV ${n}: no Portcullis process reads it`)
    } else if (i.op === 'USER') {
      user = i.args.split(':')[0]
    } else if (i.op === 'ENTRYPOINT' || i.op === 'CMD') {
      const argv = JSON.parse(i.args) as string[]
      if (i.op === 'ENTRYPOINT' && JSON.stringify(argv) !== JSON.stringify([BIN])) problems.push(`${at}: ENTRYPOINT must be ["${BIN}"]`)
      if (i.op === 'CMD' && !(argv.length === 1 && argv[0] === '--help')) problems.push(...checkInvocation(at, argv).problems)
    } else if (!['WORKDIR', 'ARG', 'LABEL', 'EXPOSE'].includes(i.op)) {
      problems.push(`${at}: ${i.op}: not an instruction this Dockerfile is known to need`)
    }
  }
  if (user === undefined || user === '0' || user === 'root') problems.push('Dockerfile: the image runs as root (USER)')
  if (uid !== undefined && user !== uid) problems.push(`Dockerfile: USER ${String(user)} is not the uid useradd creates (${uid})`)
  for (const ws of PKG.workspaces) {
    if (!prodWorkspaces.has(ws)) problems.push(`Dockerfile: the production install lacks workspace ${ws}'s package.json`)
    for (const part of ['package.json', 'dist']) if (!runtimeCopies.has(`${ws}/${part}`)) problems.push(`Dockerfile: the runtime stage lacks ${ws}/${part}`)
  }
  for (const part of ['package.json', dirname(BIN_PATH), 'dist']) if (!runtimeCopies.has(part)) problems.push(`Dockerfile: the runtime stage lacks ${part}`)
  return problems
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

const clone = <T>(v: T): T => structuredClone(v)
const container = (docs: Doc[], deployment: string): Obj =>
  podTemplate(docs.find((d) => d.obj.kind === 'Deployment' && d.obj.metadata.name === deployment)!)!.spec.containers[0]

t.test('the code\'s defaults: no process listens on a monitoring stack\'s port, admin ports outside the exporters\' 9100-9999', async (t) => {
  const defaults: Array<[string, number]> = [
    ['GATEWAY_PORT', DEFAULT_GATEWAY_PORT], ['GATEWAY_ADMIN_PORT', DEFAULT_GATEWAY_ADMIN_PORT],
    ['AUTH_PORT', DEFAULT_AUTH_PORT], ['AUTH_ADMIN_PORT', DEFAULT_AUTH_ADMIN_PORT], ['ROTATION_METRICS_PORT', DEFAULT_METRICS_PORT],
    ...SERVICE_KINDS.map((k): [string, number] => [`${k} public`, DEFAULT_PORTS[k]]),
    ...SERVICE_KINDS.map((k): [string, number] => [`${k} admin`, DEFAULT_ADMIN_PORTS[k]])
  ]
  for (const [setting, port] of defaults) {
    t.notOk(MONITORING_PORTS.has(port), `${setting} ${port} is not ${MONITORING_PORTS.get(port) ?? 'a monitoring port'}`)
  }
  for (const port of [DEFAULT_GATEWAY_ADMIN_PORT, DEFAULT_AUTH_ADMIN_PORT, DEFAULT_METRICS_PORT, ...Object.values(DEFAULT_ADMIN_PORTS)]) t.ok(port < 9100 || port > 9999, `admin port ${port}`)
  const all = defaults.map(([, p]) => p)
  t.equal(new Set(all).size, all.length, 'every default port differs: the whole stack fits on one host')
  // docs/operations.md's table must say what the code says.
  const ops = readFileSync(join(ROOT, 'docs/operations.md'), 'utf8')
  const table = /\n### Default ports\n([\s\S]*?)\n#{2,3} /.exec(ops)?.[1] ?? ''
  for (const [setting, port] of [['GATEWAY_PORT', DEFAULT_GATEWAY_PORT], ['GATEWAY_ADMIN_PORT', DEFAULT_GATEWAY_ADMIN_PORT], ['AUTH_PORT', DEFAULT_AUTH_PORT], ['AUTH_ADMIN_PORT', DEFAULT_AUTH_ADMIN_PORT], ['ROTATION_METRICS_PORT', DEFAULT_METRICS_PORT],
    ...SERVICE_KINDS.map((k) => [`${k.toUpperCase()}_SERVICE_PORT`, DEFAULT_PORTS[k]]), ...SERVICE_KINDS.map((k) => [`${k.toUpperCase()}_SERVICE_ADMIN_PORT`, DEFAULT_ADMIN_PORTS[k]])] as Array<[string, number]>) {
    t.match(table, new RegExp(`\`${setting}\`[^|\\n]*\\|[^|\\n]*\\b${port}\\b`), `docs/operations.md's default-port table gives ${setting} ${port}`)
  }
})

t.test('Kubernetes: every manifest parses and passes the Kubernetes API schema (kubernetes-models, offline)', async (t) => {
  const models: Record<string, { new (o: Obj): { validate(): void } }> = {
    'apps/v1/Deployment': Deployment, 'batch/v1/CronJob': CronJob, 'policy/v1/PodDisruptionBudget': PodDisruptionBudget,
    'v1/Service': Service, 'v1/ConfigMap': ConfigMap, 'v1/Secret': Secret, 'v1/Namespace': Namespace
  }
  const docs = readManifests()
  t.ok(docs.length >= 20, `${docs.length} objects`)
  for (const d of docs) {
    if (d.obj.kind === 'Kustomization') continue // kustomize's own file, checked below
    const M = models[`${d.obj.apiVersion as string}/${d.obj.kind as string}`]
    if (M === undefined) { t.fail(`${name(d)}: ${d.obj.apiVersion as string} ${d.obj.kind as string} has no schema here`); continue }
    t.doesNotThrow(() => new M(d.obj).validate(), name(d))
  }
  // the schema check is a real one
  const bad = clone(docs.find((d) => d.obj.kind === 'Deployment')!.obj)
  bad.spec.replicas = 'two'
  t.throws(() => new Deployment(bad).validate(), /replicas/, 'a Deployment with replicas "two" is refused')
  const noContainers = clone(docs.find((d) => d.obj.kind === 'CronJob')!.obj)
  delete noContainers.spec.jobTemplate.spec.template.spec.containers
  t.throws(() => new CronJob(noContainers).validate(), /containers/, 'a CronJob without containers is refused')
})

t.test('Kubernetes: commands, flags, env vars, ports, probes, Services, PDBs and the route file agree with the code', async (t) => {
  const docs = readManifests()
  t.same(await kubernetesProblems(docs), [])
  const files = readdirSync(K8S_DIR).filter((f) => f.endsWith('.yaml'))
  t.same(kustomizationProblems(docs.find((d) => d.obj.kind === 'Kustomization')!.obj, files), [])
})

t.test('Kubernetes: the checks fail on a drifted manifest', async (t) => {
  const docs = readManifests()
  const broken = async (what: string, change: (d: Doc[]) => void, expect: RegExp): Promise<void> => {
    const copy = clone(docs)
    change(copy)
    const problems = await kubernetesProblems(copy)
    t.ok(problems.some((p) => expect.test(p)), `${what}: ${problems.find((p) => expect.test(p)) ?? problems.join(' / ')}`)
  }
  await broken('an env var the process does not read', (d) => { container(d, 'portcullis-auth').env.find((e: Obj) => e.name === 'AUTH_DRAIN_DELAY').name = 'AUTH_DRAIN_DELAI' }, /AUTH_DRAIN_DELAI is not read by portcullis auth/)
  await broken('a probe path not served', (d) => { container(d, 'portcullis-gateway').readinessProbe.httpGet.path = '/healthz' }, /readinessProbe path \/healthz is not served/)
  await broken('a probe on the public port', (d) => { container(d, 'portcullis-order-service').livenessProbe.httpGet.port = 'http' }, /livenessProbe goes to the public listener/)
  await broken('a service probe path the admin app lacks', (d) => { container(d, 'portcullis-user-service').readinessProbe.httpGet.path = '/health' }, /path \/health is not served by the admin listener of portcullis services/)
  await broken('an unknown command', (d) => { container(d, 'portcullis-rotation').args = ['rotate'] }, /"rotate" is not a portcullis command/)
  await broken('an unknown flag', (d) => { podTemplate(d.find((x) => x.obj.kind === 'CronJob')!)!.spec.containers[0].args = ['rotation', '--onse'] }, /portcullis rotation has no option --onse/)
  await broken('an unknown service kind', (d) => { container(d, 'portcullis-product-service').args = ['services', 'shipping'] }, /takes one of user, order, product/)
  await broken('a containerPort that is not the listener', (d) => { container(d, 'portcullis-auth').ports[1].containerPort = 9091 }, /AUTH_ADMIN_PORT=8091, which no containerPort declares/)
  await broken('an admin listener left on loopback', (d) => { const c = container(d, 'portcullis-auth'); c.env = c.env.filter((e: Obj) => e.name !== 'AUTH_ADMIN_HOST') }, /AUTH_ADMIN_HOST is 127\.0\.0\.1/)
  await broken('a bad value', (d) => { container(d, 'portcullis-user-service').env.find((e: Obj) => e.name === 'SERVICE_DRAIN_DELAY').value = 'soon' }, /refuses its environment: .*SERVICE_DRAIN_DELAY/)
  await broken('a missing Secret key', (d) => { container(d, 'portcullis-auth').env.find((e: Obj) => e.name === 'DATABASE_URL').valueFrom.secretKeyRef.key = 'DB_URL' }, /refers to key DB_URL/)
  await broken('a scrape port that is not the admin port', (d) => { podTemplate(d.find((x) => x.obj.metadata?.name === 'portcullis-gateway' && x.obj.kind === 'Deployment')!)!.metadata.annotations['prometheus.io/port'] = '8080' }, /prometheus\.io\/port 8080 is not the admin listener's port/)
  await broken('a Service targeting the admin port', (d) => { d.find((x) => x.obj.kind === 'Service' && x.obj.metadata.name === 'portcullis-auth')!.obj.spec.ports[0].targetPort = 'admin' }, /exposes the admin listener/)
  await broken('a route to no Service', (d) => {
    const cm = d.find((x) => x.obj.kind === 'ConfigMap')!.obj
    cm.data['routes.yaml'] = String(cm.data['routes.yaml']).replace('portcullis-order-service:3002', 'portcullis-orders:3002')
  }, /portcullis-orders:3002\/orders names no Service/)
  await broken('a route file the gateway refuses', (d) => {
    const cm = d.find((x) => x.obj.kind === 'ConfigMap')!.obj
    cm.data['routes.yaml'] = String(cm.data['routes.yaml']).replace('timeWindow: 1m\nroutes', 'timeWindow: soon\nroutes')
  }, /portcullis gateway --check refuses it/)
  await broken('services trusting another issuer', (d) => { container(d, 'portcullis-order-service').env.find((e: Obj) => e.name === 'AUTH_ISSUER').value = 'http://auth:3010' }, /AUTH_ISSUER http:\/\/auth:3010 is not the auth service's/)
  await broken('a grace period shorter than the drain', (d) => { podTemplate(d.find((x) => x.obj.metadata?.name === 'portcullis-gateway' && x.obj.kind === 'Deployment')!)!.spec.terminationGracePeriodSeconds = 20 }, /terminationGracePeriodSeconds 20/)
  await broken('a PDB that allows no eviction', (d) => { d.find((x) => x.obj.kind === 'PodDisruptionBudget')!.obj.spec.minAvailable = 2 }, /allows no eviction/)
  await broken('a CronJob slower than KEY_PREPUBLISH', (d) => { d.find((x) => x.obj.kind === 'CronJob')!.obj.spec.schedule = '0 */2 * * *' }, /not more often than KEY_PREPUBLISH/)
  await broken('an image of another version', (d) => { container(d, 'portcullis-gateway').image = 'portcullis:0.0.9' }, /image portcullis:0\.0\.9/)
  t.match(kustomizationProblems({ resources: ['auth.yaml', 'nope.yaml'], images: [{ name: 'portcullis', newTag: '9' }] }, ['auth.yaml', 'kustomization.yaml']),
    [/nope\.yaml does not exist/, /list one of/, /newTag 9/], 'kustomization.yaml drift')
})

t.test('the shipped secret placeholders are refused at boot, naming the setting', async (t) => {
  const docs = readManifests()
  const secret = docs.find((d) => d.obj.kind === 'Secret')!.obj.stringData as Obj
  const common = parseEnvFile(readFileSync(join(SYSTEMD_ETC, 'common.env'), 'utf8'))
  const log = pino({ level: 'silent' })
  for (const value of [secret.PORTCULLIS_KEY_SECRETS, common.PORTCULLIS_KEY_SECRETS]) {
    await t.rejects(loadKeySecrets({ PORTCULLIS_KEY_SECRETS: String(value) }, '/nonexistent', log), { code: 'PORTCULLIS_CONFIG', message: /PORTCULLIS_KEY_SECRETS: secret #1 is \d+ characters long/ })
  }
})

t.test('systemd: units, their environment files and the route file agree with the code', async (t) => {
  const { units, etc } = readSystemd()
  t.same([...units.keys()].sort(), ['portcullis-auth.service', 'portcullis-gateway.service', 'portcullis-rotation-once.service', 'portcullis-rotation-once.timer', 'portcullis-rotation.service'])
  t.same(await systemdProblems(units, etc), [])
})

t.test('systemd: the checks fail on a drifted unit', async (t) => {
  const { units, etc } = readSystemd()
  const broken = async (what: string, change: (u: Map<string, string>, e: Map<string, string>) => void, expect: RegExp): Promise<void> => {
    const u = new Map(units)
    const e = new Map(etc)
    change(u, e)
    const problems = await systemdProblems(u, e)
    t.ok(problems.some((p) => expect.test(p)), `${what}: ${problems.find((p) => expect.test(p)) ?? problems.join(' / ')}`)
  }
  const edit = (m: Map<string, string>, f: string, from: string | RegExp, to: string): void => { m.set(f, m.get(f)!.replace(from, to)) }
  await broken('an env var the process does not read', (_u, e) => { edit(e, 'gateway.env', 'GATEWAY_SHUTDOWN_GRACE', 'GATEWAY_SHUTDOWN_GRAC') }, /GATEWAY_SHUTDOWN_GRAC is not read by portcullis gateway/)
  await broken('an unknown command', (u) => { edit(u, 'portcullis-auth.service', 'portcullis auth', 'portcullis authd') }, /"authd" is not a portcullis command/)
  await broken('an unknown flag', (u) => { edit(u, 'portcullis-rotation-once.service', '--once', '--one') }, /no option --one/)
  await broken('a missing environment file', (u) => { edit(u, 'portcullis-rotation.service', '/etc/portcullis/rotation.env', '/etc/portcullis/worker.env') }, /worker\.env is not shipped/)
  await broken('a port clash on one machine', (_u, e) => { edit(e, 'rotation.env', 'ROTATION_METRICS_PORT=8092', 'ROTATION_METRICS_PORT=8091') }, /ROTATION_METRICS_PORT=8091 is also portcullis-auth\.service's/)
  await broken('a monitoring port', (_u, e) => { edit(e, 'gateway.env', 'GATEWAY_ADMIN_PORT=8090', 'GATEWAY_ADMIN_PORT=9090') }, /9090 is Prometheus's port/)
  await broken('a stop timeout shorter than the drain', (u) => { edit(u, 'portcullis-gateway.service', 'TimeoutStopSec=40', 'TimeoutStopSec=10') }, /TimeoutStopSec 10 is not longer/)
  await broken('a timer starting a missing unit', (u) => { edit(u, 'portcullis-rotation-once.timer', 'Unit=portcullis-rotation-once.service', 'Unit=portcullis-rotate.service') }, /portcullis-rotate\.service is not shipped/)
  await broken('a route file naming another issuer', (_u, e) => { edit(e, 'auth.env', 'AUTH_ISSUER=http://127.0.0.1:3010', 'AUTH_ISSUER=http://auth.example') }, /no issuer is auth's AUTH_ISSUER http:\/\/auth\.example/)
  await broken('a daemon as oneshot', (u) => { edit(u, 'portcullis-gateway.service', 'Type=exec', 'Type=oneshot') }, /a daemon is Type=exec/)
})

const systemdAnalyze = spawnSync('systemd-analyze', ['--version'], { encoding: 'utf8' }).status === 0
t.test('systemd: systemd-analyze verifies the units and the timer\'s calendar', { skip: systemdAnalyze ? false : 'systemd-analyze is not installed on this machine (Debian package systemd); the unit checks above still ran' }, async (t) => {
  const { units } = readSystemd()
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-units-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  for (const [f, text] of units) writeFileSync(join(dir, f), text.replaceAll(INSTALLED_BIN, join(ROOT, BIN_PATH))) // ExecStart must exist here
  const r = spawnSync('systemd-analyze', ['verify', ...[...units.keys()].map((f) => join(dir, f))], { encoding: 'utf8' })
  t.equal(r.status, 0, r.stderr)
  t.equal(r.stderr.trim(), '', 'no unknown key, no warning')
  const timer = parseUnit(units.get('portcullis-rotation-once.timer')!)
  const cal = spawnSync('systemd-analyze', ['calendar', '--iterations=3', one(timer, 'Timer', 'OnCalendar')!], { encoding: 'utf8' })
  t.equal(cal.status, 0, cal.stderr)
  const times = [...cal.stdout.matchAll(/(?:Next elapse|Iter\. #\d+): \w+ (\S+ \S+) UTC/g)].map((m) => Date.parse(`${m[1]!}Z`))
  t.equal(times.length, 3)
  t.ok((times[2]! - times[1]!) / 1000 < DEFAULT_KEY_TIMINGS.prePublish, 'a tick more often than KEY_PREPUBLISH')
  // and verify is a real check
  writeFileSync(join(dir, 'portcullis-auth.service'), units.get('portcullis-auth.service')!.replace('KillSignal=', 'KillSignl=').replaceAll(INSTALLED_BIN, join(ROOT, BIN_PATH)))
  t.match(spawnSync('systemd-analyze', ['verify', join(dir, 'portcullis-auth.service')], { encoding: 'utf8' }).stderr, /Unknown key 'KillSignl'/)
})

t.test('Dockerfile: its commands exist (npm scripts and flags, the bin, the copied files), non-root, .dockerignore', async (t) => {
  const text = readFileSync(join(ROOT, 'Dockerfile'), 'utf8')
  const ignore = readFileSync(join(ROOT, '.dockerignore'), 'utf8')
  t.same(dockerProblems(text, ignore), [])
  t.ok((statSync(join(ROOT, BIN_PATH)).mode & 0o111) !== 0, `${BIN_PATH} is executable (the image runs it through its ${INSTALLED_BIN} link)`)
  t.match(text, /npm ci --ignore-scripts && npm run build/, 'the compile stage runs the build npm test runs')
  t.match(text, /npm ci --omit=dev --ignore-scripts && npm rebuild better-sqlite3/, 'production dependencies only')
  // the runtime user is the one the Kubernetes pods run as
  const uid = /useradd [^\n]*--uid (\d+)/.exec(text)?.[1]
  for (const d of readManifests().filter((x) => podTemplate(x) !== undefined)) t.equal(String(podTemplate(d)!.spec.securityContext.runAsUser), uid, `${name(d)} runs as the image's uid ${String(uid)}`)
  // and the checks are real ones
  const broken = (what: string, from: string | RegExp, to: string, expect: RegExp, ign = ignore): void => {
    const problems = dockerProblems(text.replace(from, to), ign)
    t.ok(problems.some((p) => expect.test(p)), `${what}: ${problems.find((p) => expect.test(p)) ?? problems.join(' / ')}`)
  }
  broken('an npm script that does not exist', '--ignore-scripts && npm run build', '--ignore-scripts && npm run compile', /npm run compile: package.json has no such script/)
  broken('an npm flag that does not exist', '--omit=dev', '--production-only', /npm ci has no option --production-only/)
  broken('a file that does not exist', 'COPY package.json package-lock.json ./', 'COPY package.json npm-shrinkwrap.json ./', /COPY npm-shrinkwrap\.json: not in the build context/)
  broken('a build output the build does not make', 'COPY --from=build /src/dist ./dist', 'COPY --from=build /src/build ./dist', /neither a source nor made by npm run build/)
  broken('an env var no process reads', 'ENV PORTCULLIS_DATA_DIR=', 'ENV PORTCULLIS_DATA=', /ENV PORTCULLIS_DATA: no Portcullis process reads it/)
  broken('a missing workspace', 'COPY --from=build /src/plugins/metrics/dist plugins/metrics/dist\n', '', /lacks plugins\/metrics\/dist/)
  broken('root', 'USER 10001:10001', 'USER root', /runs as root/)
  broken('a link to another file', 'ln -s /app/bin/portcullis.js', 'ln -s /app/bin/cli.js', /the link must be/)
  broken('a context that leaves out the lockfile', 'x', 'x', /COPY package-lock\.json: not in the build context/, `${ignore}\npackage-lock.json\n`)
  broken('an old Node.js', 'FROM node:20-bookworm-slim', 'FROM node:18-bookworm-slim', /node:18-bookworm-slim is not a Node\.js 20\+ image/)
})

t.test('Dockerfile: the runtime stage\'s files run portcullis with the compiled build and the production dependencies alone', async (t) => {
  // The image cannot be built here (no Docker engine): lay out its /app as the runtime stage's COPY
  // lines do, from this checkout's build, with node_modules holding only what `npm ci --omit=dev`
  // installs (package-lock.json's non-dev packages, the workspaces linked), and run the bin there.
  if (!existsSync(join(ROOT, 'dist/cli/portcullis.js'))) {
    t.fail('no compiled build: run npm run build first (npm test does)')
    return
  }
  const text = readFileSync(join(ROOT, 'Dockerfile'), 'utf8')
  const app = mkdtempSync(join(tmpdir(), 'portcullis-image-'))
  t.teardown(() => rmSync(app, { recursive: true, force: true }))
  const runtime = parseDockerfile(text.slice(text.lastIndexOf('\nFROM ')))
  for (const i of runtime.filter((x) => x.op === 'COPY' && x.args.startsWith('--from=build'))) {
    const [, src, dest] = i.args.split(/\s+/) as [string, string, string]
    const rel = src.replace(/^\/src\//, '')
    const to = dest.endsWith('/') ? join(app, dest, basename(rel)) : join(app, dest)
    mkdirSync(dirname(to), { recursive: true })
    cpSync(join(ROOT, rel), to, { recursive: true })
  }
  const lock = JSON.parse(readFileSync(join(ROOT, 'package-lock.json'), 'utf8')) as { packages: Record<string, { dev?: boolean, link?: boolean, resolved?: string }> }
  let production = 0
  for (const [path, entry] of Object.entries(lock.packages)) {
    if (!path.startsWith('node_modules/') || path.slice('node_modules/'.length).includes('node_modules/') || entry.dev === true) continue
    const to = join(app, path)
    mkdirSync(dirname(to), { recursive: true })
    if (entry.link === true) symlinkSync(join(app, entry.resolved!), to)
    else symlinkSync(join(ROOT, path), to)
    production++
  }
  t.notOk(existsSync(join(app, 'node_modules/tsx')) || existsSync(join(app, 'node_modules/typescript')), `${production} production packages, no dev dependency`)
  for (const source of ['cli', 'auth', 'gateway', 'lib', 'store']) t.notOk(existsSync(join(app, source)), `no ${source}/ sources in the image`)
  // --preserve-symlinks: a package resolves its own imports where the image has it, not in this checkout
  const bin = join(app, BIN_PATH)
  chmodSync(bin, 0o755)
  const run = (args: string[], env: Record<string, string> = {}): { status: number | null, out: string } => {
    const r = spawnSync(process.execPath, ['--preserve-symlinks', '--preserve-symlinks-main', bin, ...args], { cwd: app, encoding: 'utf8', env: { PATH: process.env.PATH, ...env } })
    return { status: r.status, out: `${r.stdout}${r.stderr}` }
  }
  t.same(run(['--version']), { status: 0, out: `${PKG.version}\n` })
  t.match(run(['gateway', '--help']), { status: 0, out: /GATEWAY_ADMIN_HOST/ })
  const data = mkdtempSync(join(tmpdir(), 'portcullis-image-data-'))
  t.teardown(() => rmSync(data, { recursive: true, force: true }))
  const once = run(['rotation', '--once'], { PORTCULLIS_DATA_DIR: data, PORTCULLIS_KEY_SECRETS: 'k'.repeat(40) })
  t.equal(once.status, 0, once.out)
  t.match(once.out, /"event":"key_create"[\s\S]*"event":"done"/, 'one rotation tick on SQLite (the native better-sqlite3) in the image\'s layout')
})
