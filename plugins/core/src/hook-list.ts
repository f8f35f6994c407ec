/** A route option's hooks as an array (Fastify accepts one function, an array or nothing). */
export function hookList<T> (h: T | T[] | undefined): T[] {
  return h === undefined ? [] : Array.isArray(h) ? h : [h]
}
