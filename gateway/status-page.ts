import { createHash } from 'node:crypto'

/**
 * The gateway's operator page: the document `GET /status.json` on the admin listener returns
 * (`GatewayStatus`), and one self-contained HTML page (`statusPageHtml`) that fetches it every 2 s
 * and draws it: the signing-key timeline, each issuer's JWKS freshness, upstreams and their
 * breakers, routes and their limits, and the request counters. The page has no external asset and
 * no inline attribute of any kind; its one script and one style element are allowed by hash
 * (`statusPageCsp`), and every string of the document is inserted as text, never as markup.
 */

/** The document `GET /status.json` returns on the gateway's admin listener. */
export interface GatewayStatus {
  /** When this document was made (ISO 8601); the page's clock for "now" and ages. */
  generatedAt: string
  /** The running gateway. */
  gateway: {
    /** The running route file's version (as `GET /config` and `portcullis_config_info` show it). */
    version: string
    /** When the running route file was loaded (ISO 8601). */
    loadedAt: string
    /** When the process started (ISO 8601). */
    startedAt: string
    /** The process id. */
    pid: number
  }
  /** The signing keys: their timeline from the issuer, joined with what the gateway has fetched. */
  keys: {
    /** The URL the key timeline was read from (auth's admin `GET /keys`); null when none is configured. */
    source: string | null
    /** Why the last read of the timeline failed; null when it succeeded (or there is no source). */
    error: string | null
    /** Every key, oldest first. */
    items: KeyStatus[]
  }
  /** Each issuer the route file names, with the JWKS the gateway holds for it. */
  issuers: IssuerStatus[]
  /** Each upstream origin, with its circuit breaker. */
  upstreams: UpstreamStatus[]
  /** Each route of the running route file. */
  routes: RouteStatus[]
  /** The gateway's own counters since the running config was loaded. */
  counters: StatusCounters
}

/**
 * One signing key. A key from the timeline source has its lifecycle `state` and times. A key known
 * only from a JWKS (no timeline source, or one that does not list it) has state `published`, since
 * a JWKS does not say whether a key is pending, active or retired, and every timestamp null.
 */
export interface KeyStatus {
  /** The key id (the RFC 7638 thumbprint for Portcullis keys). */
  kid: string
  /** The lifecycle state, or `published` for a key seen only in a JWKS. */
  state: 'pending' | 'active' | 'retired' | 'revoked' | 'published'
  /** When the key was created (ISO 8601); null for a `published` key. */
  createdAt: string | null
  /** A pending key's planned activation (ISO 8601), else null. */
  activatesAt: string | null
  /** When it started signing (ISO 8601), else null. */
  activatedAt: string | null
  /** When it stopped signing (ISO 8601), else null. */
  retiredAt: string | null
  /** When it was revoked (ISO 8601), else null. */
  revokedAt: string | null
  /** Whether the key is in the JWKS the gateway currently holds for some issuer. */
  published: boolean
}

/** The JWKS the gateway holds for one issuer. */
export interface IssuerStatus {
  /** The issuer (`iss`) as the route file names it. */
  issuer: string
  /** Where its JWKS is fetched from. */
  jwksUri: string
  /** Whether a JWKS has been fetched at least once. */
  loaded: boolean
  /** The last successful fetch (ISO 8601), or null. */
  lastFetchAt: string | null
  /** Seconds since the last successful fetch, or null. */
  ageSeconds: number | null
  /** Whether the held keys are older than the cache TTL (served stale because fetches fail). */
  stale: boolean
  /** Why the last fetch failed; null when it succeeded. */
  lastError: string | null
  /** The kids of the held JWKS. */
  kids: string[]
}

/** One upstream origin. */
export interface UpstreamStatus {
  /** The origin (`scheme://host:port`). */
  origin: string
  /** Its circuit breaker's state. */
  breaker: 'closed' | 'open' | 'half-open'
  /** The names of the routes that proxy to it. */
  routes: string[]
  /** Failed upstream requests (every kind) since the config was loaded. */
  errors: number
}

/** One route of the route file. */
export interface RouteStatus {
  /** The route's `name`. */
  name: string
  /** The path prefix it matches. */
  prefix: string
  /** The upstream URL it proxies to. */
  upstream: string
  /** The methods it accepts; null for any. */
  methods: string[] | null
  /** Whether it requires a bearer token. */
  auth: boolean
  /** Its rate limit per caller, or null when it has none. `scope`: a limit of its own, or the file's global one. */
  rateLimit: { max: number, timeWindowSeconds: number, scope: 'route' | 'global' } | null
}

/** The gateway's counters since the running config was loaded. */
export interface StatusCounters {
  /** Requests answered. */
  requests: number
  /** Requests answered, by status class. */
  byClass: { '2xx': number, '3xx': number, '4xx': number, '5xx': number }
  /** Requests refused by token verification (401 and 400 from jwks-auth). */
  authFailures: number
  /** Requests refused with 429. */
  rateLimited: number
  /** Failed upstream requests. */
  upstreamErrors: number
  /** Route-file reloads (every result). */
  configReloads: number
}

const STYLE = `
:root { font: 14px/1.4 system-ui, sans-serif; color: #1d2329; background: #f6f7f9; }
body { margin: 0; padding: 12px 20px 32px; }
header { display: flex; flex-wrap: wrap; gap: 4px 20px; align-items: baseline; }
h1 { font-size: 18px; margin: 0 12px 0 0; }
h2 { font-size: 15px; margin: 20px 0 6px; }
.meta { color: #56606b; }
.meta b { color: #1d2329; font-weight: 600; }
#error { margin: 10px 0; padding: 8px 12px; background: #fde8e8; border: 1px solid #e0a0a0; color: #8a1c1c; border-radius: 4px; }
[hidden] { display: none !important; }
section { background: #fff; border: 1px solid #dde1e6; border-radius: 6px; padding: 8px 14px 12px; margin-top: 12px; }
section h2 { margin-top: 4px; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 3px 10px 3px 0; border-bottom: 1px solid #eef0f3; vertical-align: top; }
th { font-weight: 600; color: #56606b; font-size: 12px; }
code, .mono { font-family: ui-monospace, monospace; font-size: 12px; }
.krow { display: grid; grid-template-columns: 230px 120px 1fr; align-items: center; gap: 8px; }
.kstate { font-size: 12px; white-space: nowrap; color: #56606b; }
.kid { font-family: ui-monospace, monospace; font-size: 12px; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.tl svg { width: 100%; height: auto; display: block; }
.legend { display: flex; flex-wrap: wrap; gap: 14px; margin: 6px 0; color: #56606b; font-size: 12px; }
.sw { display: inline-block; width: 12px; height: 10px; margin-right: 4px; vertical-align: -1px; border-radius: 2px; }
.pending, .sw.pending { fill: #9ec5f0; background: #9ec5f0; }
.planned, .sw.planned { fill: #dcebfa; background: #dcebfa; stroke: #9ec5f0; }
.active, .sw.active { fill: #2e9d5b; background: #2e9d5b; }
.retired, .sw.retired { fill: #b5bcc4; background: #b5bcc4; }
.revoked, .sw.revoked { fill: #c62828; background: #c62828; stroke: #c62828; }
.published, .sw.published { fill: #e5c07b; background: #e5c07b; }
.now { stroke: #1d2329; stroke-dasharray: 3 3; }
.axis text { font-size: 11px; fill: #56606b; }
.axis line { stroke: #c3c9d0; }
.tag { display: inline-block; padding: 0 6px; border-radius: 8px; font-size: 12px; background: #eef0f3; }
.tag.bad, .tag.open { background: #fde8e8; color: #8a1c1c; }
.tag.good, .tag.closed { background: #e3f4ea; color: #1f6b3e; }
.tag.half-open { background: #fff3d6; color: #7a5500; }
.counters { display: flex; flex-wrap: wrap; gap: 10px; }
.counter { border: 1px solid #eef0f3; border-radius: 4px; padding: 4px 12px; min-width: 90px; }
.counter .v { font-size: 20px; font-weight: 600; font-variant-numeric: tabular-nums; }
.counter .l { color: #56606b; font-size: 12px; }
.empty { color: #8a939c; }
`

const SCRIPT = String.raw`
'use strict'
;(() => {
  const SVGNS = 'http://www.w3.org/2000/svg'
  const W = 1000 // viewBox width of every timeline row: one shared axis
  const PERIOD = 2000
  const $ = (id) => document.getElementById(id)
  const set = (e, attrs) => { for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) e.setAttribute(k, String(v)); return e }
  const txt = (e, t) => { if (t !== null && t !== undefined) e.textContent = String(t); return e }
  const el = (tag, attrs, t) => txt(set(document.createElement(tag), attrs), t)
  const svg = (tag, attrs, t) => txt(set(document.createElementNS(SVGNS, tag), attrs), t)
  const arr = (x) => Array.isArray(x) ? x : []
  const ms = (s) => { if (typeof s !== 'string') return null; const t = Date.parse(s); return Number.isNaN(t) ? null : t }
  const when = (s) => typeof s === 'string' ? s.replace('T', ' ').replace(/\.\d+Z$/, 'Z') : '-'
  const age = (sec) => typeof sec !== 'number' ? '' : sec < 120 ? Math.round(sec) + ' s ago' : sec < 7200 ? Math.round(sec / 60) + ' min ago' : Math.round(sec / 3600) + ' h ago'
  const tag = (text, cls) => el('span', { class: 'tag ' + (cls || '') }, text)
  const row = (attrs, cells) => { const tr = el('tr', attrs); for (const c of cells) { const td = el('td'); if (c instanceof Node) td.append(c); else td.textContent = String(c); tr.append(td) } return tr }
  const table = (heads, rows, empty) => {
    if (rows.length === 0) return el('p', { class: 'empty' }, empty)
    const t = el('table'); const h = el('tr'); for (const x of heads) h.append(el('th', {}, x))
    const body = el('tbody'); body.append(...rows); t.append(el('thead'), body); t.firstChild.append(h); return t
  }

  // Time axis ticks: the smallest step giving at most 8 labels; UTC.
  const STEPS = [1, 5, 10, 30, 60, 300, 600, 1800, 3600, 10800, 21600, 43200, 86400, 172800, 604800, 2592000].map((s) => s * 1000)
  const tickLabel = (t, step) => { const s = new Date(t).toISOString(); return step >= 86400000 ? s.slice(5, 10) : step >= 60000 ? s.slice(11, 16) : s.slice(11, 19) }

  function keyPhases (k, now) {
    const c = ms(k.createdAt), a = ms(k.activatedAt), r = ms(k.retiredAt), v = ms(k.revokedAt), plan = ms(k.activatesAt)
    const out = []
    if (c !== null) {
      const end = a ?? v ?? r ?? now
      out.push({ cls: 'pending', from: c, to: end, tip: 'pending: created ' + when(k.createdAt) + (a !== null ? ', activated ' + when(k.activatedAt) : v !== null ? ', revoked ' + when(k.revokedAt) : ', pending now') + (plan !== null ? ' (planned activation ' + when(k.activatesAt) + ')' : '') })
      if (k.state === 'pending' && plan !== null && plan > now) out.push({ cls: 'planned', from: now, to: plan, tip: 'planned activation at ' + when(k.activatesAt) })
    }
    if (a !== null) out.push({ cls: 'active', from: a, to: r ?? v ?? now, tip: 'active: activated ' + when(k.activatedAt) + (r !== null ? ', retired ' + when(k.retiredAt) : v !== null ? ', revoked ' + when(k.revokedAt) : ', signing now') })
    if (r !== null) out.push({ cls: 'retired', from: r, to: v ?? now, tip: 'retired: ' + when(k.retiredAt) + (v !== null ? ', revoked ' + when(k.revokedAt) : ', still published') })
    return { bars: out, revoked: v }
  }

  function renderKeys (doc) {
    const box = $('keys'); const items = arr(doc.keys && doc.keys.items)
    const now = ms(doc.generatedAt) ?? Date.now()
    const src = doc.keys && doc.keys.source
    txt($('keys-source'), src ? 'timeline from ' + src : 'no timeline source: keys as the JWKS shows them')
    const kerr = $('keys-error'); kerr.hidden = !(doc.keys && doc.keys.error); kerr.textContent = kerr.hidden ? '' : 'timeline unavailable: ' + doc.keys.error
    let lo = now, hi = now
    const all = items.map((k) => { const p = keyPhases(k, now); for (const b of p.bars) { lo = Math.min(lo, b.from); hi = Math.max(hi, b.to) } if (p.revoked !== null) hi = Math.max(hi, p.revoked); return p })
    if (hi - lo < 60000) lo = hi - 60000
    const pad = (hi - lo) * 0.02; lo -= pad; hi += pad
    const x = (t) => ((t - lo) / (hi - lo)) * W
    const rows = items.map((k, i) => {
      const p = all[i]
      const div = el('div', { class: 'krow', 'data-kid': k.kid, 'data-state': k.state, 'data-published': k.published ? 'true' : 'false' })
      div.append(el('div', { class: 'kid', title: k.kid }, k.kid), el('div', { class: 'kstate' }, k.state + (k.published && k.state !== 'published' ? ' · in JWKS' : '')))
      const s = svg('svg', { viewBox: '0 0 ' + W + ' 16', class: 'bars', role: 'img' })
      s.append(svg('title', {}, k.kid + ' (' + k.state + ')'))
      if (k.state === 'published' && p.bars.length === 0) {
        const b = svg('rect', { x: 0, y: 4, width: Math.max(1, x(now)).toFixed(1), height: 8, class: 'published' }); b.append(svg('title', {}, 'in the JWKS; no timeline known')); s.append(b)
      }
      for (const b of p.bars) {
        const r = svg('rect', { x: x(b.from).toFixed(1), y: 3, width: Math.max(1, x(b.to) - x(b.from)).toFixed(1), height: 10, class: b.cls, 'data-phase': b.cls })
        r.append(svg('title', {}, b.tip)); s.append(r)
      }
      if (p.revoked !== null) {
        const m = svg('rect', { x: (x(p.revoked) - 2).toFixed(1), y: 0, width: 4, height: 16, class: 'revoked', 'data-phase': 'revoked' })
        m.append(svg('title', {}, 'revoked ' + when(k.revokedAt))); s.append(m)
      }
      s.append(svg('line', { x1: x(now).toFixed(1), x2: x(now).toFixed(1), y1: 0, y2: 16, class: 'now' }))
      const cell = el('div', { class: 'tl' }); cell.append(s); div.append(cell)
      return div
    })
    const axis = el('div', { class: 'krow' }); axis.append(el('div', { class: 'meta' }, 'UTC'), el('div'))
    const a = svg('svg', { viewBox: '0 0 ' + W + ' 18', class: 'axis' })
    const step = STEPS.find((st) => (hi - lo) / st <= 8) ?? STEPS[STEPS.length - 1]
    for (let t = Math.ceil(lo / step) * step; t <= hi; t += step) {
      a.append(svg('line', { x1: x(t).toFixed(1), x2: x(t).toFixed(1), y1: 0, y2: 5 }))
      a.append(svg('text', { x: x(t).toFixed(1), y: 16, 'text-anchor': 'middle' }, tickLabel(t, step)))
    }
    const ac = el('div', { class: 'tl' }); ac.append(a); axis.append(ac)
    box.replaceChildren(...(rows.length ? rows.concat([axis]) : [el('p', { class: 'empty' }, 'no keys')]))
  }

  function render (doc) {
    const g = doc.gateway || {}
    txt($('version'), g.version); txt($('loaded'), when(g.loadedAt)); txt($('started'), when(g.startedAt)); txt($('pid'), g.pid)
    txt($('updated'), doc.generatedAt)
    renderKeys(doc)
    $('issuers').replaceChildren(table(['issuer', 'JWKS', 'loaded', 'last fetch', 'stale', 'last error', 'kids'], arr(doc.issuers).map((i) => row(
      { 'data-issuer': i.issuer, 'data-loaded': String(!!i.loaded), 'data-stale': String(!!i.stale) },
      [i.issuer, el('code', {}, i.jwksUri), tag(i.loaded ? 'yes' : 'no', i.loaded ? 'good' : 'bad'),
        i.lastFetchAt ? when(i.lastFetchAt) + ' (' + age(i.ageSeconds) + ')' : 'never',
        tag(i.stale ? 'stale' : 'fresh', i.stale ? 'bad' : 'good'), i.lastError || '-', el('code', {}, arr(i.kids).join(' ') || '-')])), 'no issuers'))
    $('upstreams').replaceChildren(table(['origin', 'breaker', 'routes', 'errors'], arr(doc.upstreams).map((u) => row(
      { 'data-origin': u.origin, 'data-breaker': u.breaker },
      [el('code', {}, u.origin), tag(u.breaker, u.breaker), arr(u.routes).join(', '), u.errors])), 'no upstreams'))
    $('routes').replaceChildren(table(['route', 'prefix', 'upstream', 'methods', 'token', 'rate limit'], arr(doc.routes).map((r) => row(
      { 'data-route': r.name },
      [r.name, el('code', {}, r.prefix), el('code', {}, r.upstream), r.methods ? arr(r.methods).join(' ') : 'any', r.auth ? 'required' : 'none',
        r.rateLimit ? r.rateLimit.max + ' / ' + r.rateLimit.timeWindowSeconds + ' s (' + r.rateLimit.scope + ')' : 'none'])), 'no routes'))
    const c = doc.counters || {}; const bc = c.byClass || {}
    const counters = [['requests', 'requests', c.requests], ['2xx', '2xx', bc['2xx']], ['3xx', '3xx', bc['3xx']], ['4xx', '4xx', bc['4xx']], ['5xx', '5xx', bc['5xx']],
      ['authFailures', 'auth failures', c.authFailures], ['rateLimited', 'rate limited', c.rateLimited], ['upstreamErrors', 'upstream errors', c.upstreamErrors], ['configReloads', 'config reloads', c.configReloads]]
    $('counters').replaceChildren(...counters.map(([k, label, v]) => {
      const d = el('div', { class: 'counter', 'data-counter': k }); d.append(el('div', { class: 'v' }, v ?? '-'), el('div', { class: 'l' }, label)); return d
    }))
  }

  let lastGood = null
  async function tick () {
    try {
      const res = await fetch('status.json', { cache: 'no-store', headers: { accept: 'application/json' } })
      if (!res.ok) throw new Error('status.json answered HTTP ' + res.status)
      const doc = await res.json()
      if (!doc || typeof doc !== 'object' || typeof doc.generatedAt !== 'string') throw new Error('status.json is not a status document')
      render(doc)
      lastGood = doc.generatedAt
      $('error').hidden = true
    } catch (err) {
      const banner = $('error')
      banner.textContent = 'Could not refresh (' + (err && err.message ? err.message : String(err)) + ') at ' + new Date().toISOString().slice(11, 19) + ' UTC' +
        (lastGood ? '; showing the data of ' + lastGood : '')
      banner.hidden = false
    } finally {
      setTimeout(tick, PERIOD)
    }
  }
  tick()
})()
`

const BODY = `<header>
<h1>Portcullis gateway</h1>
<span class="meta">config <b id="version">-</b></span>
<span class="meta">loaded <b id="loaded">-</b></span>
<span class="meta">started <b id="started">-</b></span>
<span class="meta">pid <b id="pid">-</b></span>
<span class="meta">updated <b id="updated">never</b></span>
</header>
<div id="error" role="alert" hidden></div>
<section><h2>Signing keys</h2>
<div class="meta" id="keys-source"></div>
<div id="keys-error" class="tag bad" hidden></div>
<div class="legend"><span><span class="sw pending"></span>pending</span><span><span class="sw planned"></span>planned activation</span><span><span class="sw active"></span>active (signing)</span><span><span class="sw retired"></span>retired (still published)</span><span><span class="sw revoked"></span>revoked</span><span><span class="sw published"></span>in a JWKS, no timeline</span><span>dashed line: now</span></div>
<div id="keys"></div>
</section>
<section><h2>Issuers (JWKS)</h2><div id="issuers"></div></section>
<section><h2>Counters (since the config was loaded)</h2><div id="counters" class="counters"></div></section>
<section><h2>Upstreams</h2><div id="upstreams"></div></section>
<section><h2>Routes</h2><div id="routes"></div></section>`

const sha256 = (text: string): string => `'sha256-${createHash('sha256').update(text, 'utf8').digest('base64')}'`

const HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Portcullis gateway status</title>
<link rel="icon" href="data:,">
<style>${STYLE}</style>
</head>
<body>
${BODY}
<script>${SCRIPT}</script>
</body>
</html>
`

const CSP = `default-src 'none'; script-src ${sha256(SCRIPT)}; style-src ${sha256(STYLE)}; connect-src 'self'; img-src data:`

/** The operator page: one HTML document, its style and script inline, no external asset. */
export function statusPageHtml (): string {
  return HTML
}

/**
 * The `Content-Security-Policy` to serve the page with: nothing but its own inline script and style
 * (allowed by their SHA-256), fetches to its own origin (`status.json`) and `data:` images (the
 * empty favicon).
 */
export function statusPageCsp (): string {
  return CSP
}
