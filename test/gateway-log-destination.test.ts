import t from 'tap'
import { spawnSync } from 'node:child_process'
import { closeSync, constants, mkdtempSync, openSync, readFileSync, readSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { BatchedDestination } from '../lib/log-destination.js'

t.test('lines are held until a batch is full or flushed, then written in order', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-logdest-'))
  const file = join(dir, 'out.log')
  const fd = openSync(file, 'w')
  const dest = new BatchedDestination({ fd, batch: 100, flushInterval: 60_000 })
  t.teardown(() => { dest.close(); closeSync(fd); rmSync(dir, { recursive: true, force: true }) })
  dest.write('{"n":1}\n')
  dest.write('{"n":2}\n')
  t.equal(readFileSync(file, 'utf8'), '', 'held below the batch size')
  dest.write(`{"n":3,"pad":"${'x'.repeat(100)}"}\n`)
  t.equal(readFileSync(file, 'utf8').split('\n').length, 4, 'a full batch is written at once')
  dest.write('{"n":4,"s":"ü✓"}\n')
  let called = false
  dest.flush(() => { called = true })
  t.ok(called, 'pino\'s flush callback runs')
  const lines = readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { n: number, s?: string })
  t.same(lines.map((l) => l.n), [1, 2, 3, 4])
  t.equal(lines[3]!.s, 'ü✓', 'UTF-8 intact')
})

t.test('a full buffer drops and counts lines instead of growing without bound', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-logdest-'))
  const fd = openSync(join(dir, 'out.log'), 'w')
  const dest = new BatchedDestination({ fd, batch: 1_000_000, maxPending: 20, flushInterval: 60_000 })
  t.teardown(() => { dest.close(); closeSync(fd); rmSync(dir, { recursive: true, force: true }) })
  dest.write('0123456789\n')
  dest.write('0123456789\n')
  t.equal(dest.dropped, 1)
})

t.test('lines still pending are written when the process exits', async (t) => {
  const mod = fileURLToPath(new URL('../lib/log-destination.ts', import.meta.url))
  const script = `import { BatchedDestination } from ${JSON.stringify(mod)}
const d = new BatchedDestination({ flushInterval: 60000 })
d.write('{"msg":"last words"}\\n')
process.exit(0)`
  const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { encoding: 'utf8' })
  t.equal(r.status, 0, r.stderr)
  t.equal(r.stdout, '{"msg":"last words"}\n')
})

t.test('a reader that stops reading (EAGAIN) loses nothing: the rest is kept, in order, for the next flush', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-logdest-'))
  const fifo = join(dir, 'pipe')
  t.equal(spawnSync('mkfifo', [fifo]).status, 0, 'mkfifo')
  const reader = openSync(fifo, constants.O_RDONLY | constants.O_NONBLOCK)
  const writer = openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK)
  const dest = new BatchedDestination({ fd: writer, batch: 1000, flushInterval: 60_000 })
  t.teardown(() => { dest.close(); closeSync(writer); closeSync(reader); rmSync(dir, { recursive: true, force: true }) })
  // ~200 KB: several times what a pipe holds (64 KiB on Linux), so writes end in EAGAIN mid-batch
  const lines = Array.from({ length: 2000 }, (_, i) => `{"n":${i},"pad":"${'p'.repeat(90)}"}\n`)
  for (const l of lines) dest.write(l)
  t.equal(dest.dropped, 0, 'held back, not dropped')
  let got = ''
  const chunk = Buffer.alloc(65536)
  for (let i = 0; i < 100 && got.length < lines.join('').length; i++) {
    let n = 0
    try { n = readSync(reader, chunk, 0, chunk.length, null) } catch { n = 0 } // EAGAIN: empty for now
    got += chunk.toString('utf8', 0, n)
    dest.flush()
  }
  t.equal(got, lines.join(''), 'every line once, in order')
})

t.test('maxWrite: each write(2) carries whole lines and at most maxWrite bytes (a longer line goes alone, whole)', async (t) => {
  const fs = await import('node:fs')
  const writes: string[] = []
  const { BatchedDestination: Mocked } = await t.mockImport<{ BatchedDestination: typeof BatchedDestination }>('../lib/log-destination.js', {
    'node:fs': { ...fs, writeSync: (_fd: number, buf: Buffer, off: number, len: number) => { writes.push(buf.toString('utf8', off, off + len)); return len } }
  })
  const dest = new Mocked({ fd: 99, batch: 32 * 1024, maxWrite: 4096, flushInterval: 60_000 })
  t.teardown(() => { dest.close() })
  const lines: string[] = []
  for (let i = 0; i < 300; i++) lines.push(`{"n":${i},"pad":"${'x'.repeat(i === 150 ? 9000 : (i * 37) % 400)}"}\n`)
  for (const l of lines) dest.write(l)
  dest.flush()
  t.equal(writes.join(''), lines.join(''), 'every line, in order')
  t.ok(writes.length > 8, `${writes.length} writes`)
  for (const w of writes) {
    t.ok(w.endsWith('\n'), 'a write ends at a line end')
    const n = Buffer.byteLength(w)
    if (n > 4096) t.equal(w.split('\n').length, 2, 'only a single line longer than maxWrite goes over it')
  }
  t.ok(writes.some((w) => Buffer.byteLength(w) > 4096), 'the 9,000-byte line went whole')
})
