import t from 'tap'
import { collectHotCounts, hotCounter, promClient } from '@portcullis/metrics'
import { hotHistogram } from '../gateway/hot-histogram.js'

// Values on, between, below and above the bucket bounds, and non-integers that sum with rounding.
const VALUES = [0, 0.000001, 0.000005, 0.0000051, 0.00002, 0.00007, 0.0003, 0.001, 0.0049, 0.1, 0.3, 1, 1.5, 7, 1e9]
const BUCKETS = [0.000005, 0.00002, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.005, 0.025, 0.1, 1]

function histograms (): { hot: promClient.Histogram<'cache'>, direct: promClient.Histogram<'cache'>, registry: promClient.Registry, reference: promClient.Registry } {
  const registry = new promClient.Registry()
  const reference = new promClient.Registry()
  const opts = { name: 'd_seconds', help: 'h', labelNames: ['cache'] as const, buckets: BUCKETS }
  const hot = new promClient.Histogram({ ...opts, registers: [registry], collect: collectHotCounts })
  const direct = new promClient.Histogram({ ...opts, registers: [reference] })
  return { hot, direct, registry, reference }
}

t.test('hotHistogram: a scrape shows exactly what direct observes would have produced', async (t) => {
  const { hot, direct, registry, reference } = histograms()
  const hit = hotHistogram(hot, { cache: 'hit' })
  const miss = hotHistogram(hot, { cache: 'miss' })
  t.equal(await registry.metrics(), await reference.metrics(), 'nothing observed: the same (empty) output')
  for (const v of VALUES) { hit.observe(v); direct.observe({ cache: 'hit' }, v) }
  const store = (hot as unknown as { store: { entry: (l: object) => unknown } }).store
  t.equal(store.entry({ cache: 'hit' }), undefined, 'observations wait in local numbers until a read (the hot path is taken)')
  miss.observe(0.00003); direct.observe({ cache: 'miss' }, 0.00003)
  t.equal(await registry.metrics(), await reference.metrics(), 'after a first batch')
  // a second batch folds into the same record; a read in between changes nothing
  await registry.metrics()
  for (const v of VALUES.slice(3)) { hit.observe(v); direct.observe({ cache: 'hit' }, v) }
  const out = await registry.metrics()
  t.equal(out, await reference.metrics(), 'after a second batch')
  t.match(out, new RegExp(`d_seconds_count\\{cache="hit"\\} ${VALUES.length * 2 - 3}`))
  // histogram.get() (what the cluster aggregator reads) sees the folded values too
  hit.observe(0.5); direct.observe({ cache: 'hit' }, 0.5)
  t.same(await hot.get(), await direct.get())
})

t.test('hotHistogram and hotCounter fall back to direct updates on metrics without the collect hook', async (t) => {
  const registry = new promClient.Registry()
  const h = new promClient.Histogram({ name: 'plain_seconds', help: 'h', labelNames: ['x'], registers: [registry] })
  const c = new promClient.Counter({ name: 'plain_total', help: 'h', labelNames: ['x'], registers: [registry] })
  hotHistogram(h, { x: 'a' }).observe(0.2)
  hotCounter(c, { x: 'a' }).inc()
  const out = await registry.metrics()
  t.match(out, /plain_seconds_count\{x="a"\} 1/)
  t.match(out, /plain_total\{x="a"\} 1/)
})
