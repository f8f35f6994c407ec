import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { connect, type AddressInfo, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import pino from 'pino'
import { buildGateway } from '../gateway/server.js'
import { GatewayRuntime } from '../gateway/runtime.js'
import { parseGatewayConfig } from '../gateway/config.js'
import { checkListenerLimits, defaultMaxConnections, type ListenerLimits } from '../gateway/listener.js'
import { settingsFromEnv } from '../gateway/main.js'
import { echoUpstream } from './helpers/upstream.js'

const LIMITS: ListenerLimits = { idleTimeout: 0.6, keepAliveTimeout: 0.4, headersTimeout: 0.4, requestTimeout: 20, maxConnections: 1000 }

/** The listener `portcullis gateway` runs (GatewayRuntime, reloadable), and buildGateway's own app's (the bench's). */
const MODES = ['runtime', 'app'] as const

async function start (mode: typeof MODES[number], t: Test, limits: Partial<ListenerLimits> = {}): Promise<{ port: number }> {
  const up = await echoUpstream()
  t.teardown(() => up.close())
  // route timeouts under the idle timeout: the runtime applies the boot's timing rules
  const file = { timeouts: { connect: 0.2, headers: 0.2, body: 0.2 }, routes: [{ name: 'a', prefix: '/a', upstream: up.url, auth: false }] }
  if (mode === 'runtime') {
    const dir = mkdtempSync(join(tmpdir(), 'portcullis-listener-'))
    t.teardown(() => rmSync(dir, { recursive: true, force: true }))
    writeFileSync(join(dir, 'routes.json'), JSON.stringify(file))
    const rt = await GatewayRuntime.start({ configPath: join(dir, 'routes.json'), listener: { ...LIMITS, ...limits }, logger: pino({ level: 'silent' }) })
    t.teardown(() => rt.close())
    await rt.listen('127.0.0.1', 0)
    return { port: (rt.server.address() as AddressInfo).port }
  }
  const gw = await buildGateway({ config: parseGatewayConfig(file, 'test'), logger: false, listener: { ...LIMITS, ...limits } })
  t.teardown(() => gw.close())
  await gw.app.listen({ port: 0, host: '127.0.0.1' })
  return { port: (gw.app.server.address() as AddressInfo).port }
}

/** Opens a connection; resolves when the gateway closes it, with what it wrote and after how long. */
function watch (port: number, send = ''): { socket: Socket, closed: Promise<{ got: string, ms: number }> } {
  const started = Date.now()
  let got = ''
  const socket = connect(port, '127.0.0.1', () => { if (send !== '') socket.write(send) })
  socket.setEncoding('utf8').on('data', (d: string) => { got += d })
  // a gateway that never closes fails the test in 5 s instead of hanging it
  const guard = setTimeout(() => socket.destroy(), 5000)
  socket.on('close', () => clearTimeout(guard))
  const closed = new Promise<{ got: string, ms: number }>((resolve) => {
    socket.on('close', () => resolve({ got, ms: Date.now() - started }))
    socket.on('error', () => {})
  })
  return { socket, closed }
}

t.test('a connection that sends nothing is closed at the idle timeout (1,000 idle sockets stayed open 190 s)', async (t) => {
  for (const mode of MODES) {
    await t.test(mode, async (t) => {
      // Node also counts a silent connection against the headers timeout: set it long so the idle one acts
      const { port } = await start(mode, t, { headersTimeout: 10 })
      const { closed } = watch(port)
      const { ms } = await closed
      t.ok(ms >= 500 && ms < 3000, `closed after ${ms} ms (idle timeout 600 ms)`)
    })
  }
})

t.test('slow headers get 408 in the JSON shape and a closed socket at the headers timeout', async (t) => {
  for (const mode of MODES) {
    await t.test(mode, async (t) => {
      const { port } = await start(mode, t, { idleTimeout: 10 }) // the headers timeout, not the idle one, must act
      const { closed } = watch(port, 'GET /a/x HTTP/1.1\r\nHost: gw\r\nX-Slow: ') // never finishes its headers
      const { got, ms } = await closed
      t.match(got, /^HTTP\/1\.1 408 /)
      t.match(got, /"code":"PORTCULLIS_REQUEST_TIMEOUT"/)
      t.match(got, /\r\nconnection: close/i)
      t.ok(ms < 3000, `closed after ${ms} ms (headers timeout 400 ms)`)
    })
  }
})

t.test('an idle keep-alive connection is closed at the keep-alive timeout after its response', async (t) => {
  for (const mode of MODES) {
    await t.test(mode, async (t) => {
      const { port } = await start(mode, t, { idleTimeout: 10 }) // the keep-alive timeout, not the idle one, must act
      const { closed } = watch(port, 'GET /a/x HTTP/1.1\r\nHost: gw\r\n\r\n')
      const { got, ms } = await closed
      t.match(got, /^HTTP\/1\.1 200 /)
      t.match(got, /keep-alive: timeout=0/i, 'the response announces the keep-alive timeout')
      t.ok(ms < 3000, `closed after ${ms} ms`)
    })
  }
})

t.test('connections over the cap are closed on arrival; the ones within keep working', async (t) => {
  for (const mode of MODES) {
    await t.test(mode, async (t) => {
      const { port } = await start(mode, t, { maxConnections: 2, idleTimeout: 30, headersTimeout: 10 }) // the two held sockets stay open
      const a = watch(port)
      const b = watch(port)
      await new Promise((resolve) => setTimeout(resolve, 100))
      const over = watch(port, 'GET /a/x HTTP/1.1\r\nHost: gw\r\n\r\n')
      const { got } = await over.closed
      t.equal(got, '', 'the third connection is closed without an answer')
      a.socket.destroy()
      await a.closed
      await new Promise((resolve) => setTimeout(resolve, 100))
      const again = watch(port, 'GET /a/x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n')
      t.match((await again.closed).got, /^HTTP\/1\.1 200 /, 'a slot freed: a new connection is served')
      b.socket.destroy()
    })
  }
})

t.test('listener settings: defaults, env names, and limits that do not fit are refused at boot', async (t) => {
  const s = settingsFromEnv({})
  t.same({ ...s.listener, maxConnections: 0 }, { idleTimeout: 60, keepAliveTimeout: 72, headersTimeout: 10, requestTimeout: 120, maxConnections: 0 })
  t.ok(s.listener.maxConnections >= 64)
  t.equal(settingsFromEnv({ GATEWAY_IDLE_TIMEOUT: '2m', GATEWAY_MAX_CONNECTIONS: '500' }).listener.idleTimeout, 120)
  t.throws(() => settingsFromEnv({ GATEWAY_MAX_CONNECTIONS: '0' }), /GATEWAY_MAX_CONNECTIONS/)
  t.throws(() => settingsFromEnv({ GATEWAY_HEADERS_TIMEOUT: 'soon' }), /GATEWAY_HEADERS_TIMEOUT/)
  const config = parseGatewayConfig({ routes: [{ prefix: '/a', upstream: 'http://127.0.0.1:1', auth: false, timeouts: { body: 45 } }] }, 'test')
  t.throws(() => checkListenerLimits({ ...s.listener, idleTimeout: 30 }, config), /GATEWAY_IDLE_TIMEOUT: .*longest is 45s/)
  t.throws(() => checkListenerLimits({ ...s.listener, requestTimeout: 5 }, config), /GATEWAY_REQUEST_TIMEOUT/)
  t.doesNotThrow(() => checkListenerLimits({ ...s.listener, idleTimeout: 0, requestTimeout: 0 }, config), '0 turns either off')
})

t.test('the default connection cap is the open-file limit less a reserve', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-limits-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const file = (line: string): string => {
    const p = join(dir, `limits-${Math.random().toString(36).slice(2)}`)
    writeFileSync(p, `Limit                     Soft Limit           Hard Limit           Units\n${line}\n`)
    return p
  }
  t.equal(defaultMaxConnections(file('Max open files            1024                 1048576              files')), 768)
  t.equal(defaultMaxConnections(file('Max open files            100                  100                  files')), 64)
  t.equal(defaultMaxConnections(file('Max open files            unlimited            unlimited            files')), 4096)
  t.equal(defaultMaxConnections(join(dir, 'missing')), 4096, 'no /proc: a fixed cap')
})

t.test('a silent connection is also closed at the headers timeout when that comes first', async (t) => {
  for (const mode of MODES) {
    await t.test(mode, async (t) => {
      const { port } = await start(mode, t, { idleTimeout: 10, headersTimeout: 0.4 })
      const { ms } = await watch(port).closed
      t.ok(ms < 3000, `closed after ${ms} ms (headers timeout 400 ms, idle 10 s)`)
    })
  }
})
