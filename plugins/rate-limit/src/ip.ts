import { isIPv6 } from 'node:net'

/** The 8 16-bit groups of a valid IPv6 address (zone id dropped, an embedded IPv4 tail converted). */
function groups (ip: string): number[] {
  let s = ip.split('%')[0]!.toLowerCase()
  const v4 = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(s)
  if (v4 !== null) {
    const [a, b, c, d] = v4.slice(1).map(Number) as [number, number, number, number]
    s = `${s.slice(0, v4.index)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`
  }
  const [head, tail] = s.split('::') as [string, string | undefined]
  const h = head === '' ? [] : head.split(':')
  const t = tail === undefined ? [] : tail === '' ? [] : tail.split(':')
  const zeros = tail === undefined ? [] : Array<string>(8 - h.length - t.length).fill('0')
  return [...h, ...zeros, ...t].map((g) => parseInt(g, 16))
}

/**
 * The rate-limit identity of a client address: an IPv4 address as it is, an IPv4-mapped IPv6
 * address as its IPv4 form, and any other IPv6 address as its /64 network (one host usually holds
 * a whole /64, so per-address budgets would be free to multiply). `unknown` without an address.
 */
export function clientKey (ip: string | undefined): string {
  // no address (a Unix-socket listener, a request whose socket is gone): one shared budget
  if (ip === undefined || ip === '') return 'unknown'
  if (!isIPv6(ip)) return ip.toLowerCase()
  const g = groups(ip)
  if (g.slice(0, 5).every((x) => x === 0) && g[5] === 0xffff) {
    return `${g[6]! >> 8}.${g[6]! & 0xff}.${g[7]! >> 8}.${g[7]! & 0xff}`
  }
  return `${g.slice(0, 4).map((x) => x.toString(16)).join(':')}::/64`
}
