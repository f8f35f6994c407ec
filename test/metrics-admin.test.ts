import Fastify from 'fastify'
import t from 'tap'
import { admin } from '@portcullis/metrics'
import { leanHistogram } from '../gateway/hot-histogram.js'
import metrics from '@portcullis/metrics'

t.test('route histograms use the route pattern and land in the app registry, served by admin', async (t) => {
  const app = Fastify()
  await app.register(metrics, { defaultMetrics: false })
  app.get('/items/:id', async () => ({ ok: true }))
  const other = Fastify()
  await other.register(metrics, { defaultMetrics: false }) // a second app in one process: no collision
  await app.ready()
  await other.ready()
  t.teardown(() => app.close())
  t.teardown(() => other.close())

  await app.inject({ url: '/items/12345' })
  await app.inject({ url: '/not-a-route' })

  let ready: boolean | string = 'warming up'
  const adminApp = Fastify()
  await adminApp.register(admin, { registries: [app.metricsRegistry], ready: () => ready })
  t.teardown(() => adminApp.close())

  const m = await adminApp.inject({ url: '/metrics' })
  t.equal(m.statusCode, 200)
  t.match(m.body, /http_request_duration_seconds_count\{method="GET",route="\/items\/:id",status_code="200"\} 1/)
  t.notMatch(m.body, /12345/, 'raw URLs never become labels')
  t.notMatch(m.body, /not-a-route/, 'unregistered routes are not labelled')

  t.equal((await adminApp.inject({ url: '/health/live' })).statusCode, 200)
  const notReady = await adminApp.inject({ url: '/health/ready' })
  t.equal(notReady.statusCode, 503)
  t.equal(notReady.json().reason, 'warming up')
  ready = true
  t.equal((await adminApp.inject({ url: '/health/ready' })).statusCode, 200)
  t.equal((await app.inject({ url: '/metrics' })).statusCode, 404, 'no /metrics on the public app')
})

t.test('gateway leanHistogram: the same histogram (name, labels, route pattern) from one hook; 404s unlabelled', async (t) => {
  const app = Fastify()
  await app.register(metrics, { defaultMetrics: false, routeMetrics: false })
  leanHistogram(app, app.metricsRegistry)
  app.get('/items/:id', async () => ({ ok: true }))
  app.get('/quiet', { config: { disableMetrics: true } }, async () => 'ok')
  await app.ready()
  t.teardown(() => app.close())
  await app.inject({ url: '/items/12345' })
  await app.inject({ url: '/items/6' })
  await app.inject({ url: '/not-a-route' })
  await app.inject({ url: '/quiet' })
  const body = await app.metricsRegistry.metrics()
  t.match(body, /# HELP http_request_duration_seconds request duration in seconds/)
  t.match(body, /http_request_duration_seconds_count\{method="GET",route="\/items\/:id",status_code="200"\} 2/)
  t.match(body, /http_request_duration_seconds_bucket\{le="\+Inf",method="GET",route="\/items\/:id",status_code="200"\} 2/)
  t.notMatch(body, /12345|not-a-route|quiet/, 'raw URLs, unregistered paths and opted-out routes are not labelled')
  t.notMatch(body, /http_request_summary_seconds/, 'no summary')
})
