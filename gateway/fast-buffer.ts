/**
 * Buffer's per-encoding methods, present on every Buffer but missing from Node's types. They skip the
 * switch on the encoding name that `write`/`toString` do first (measurable on a per-request path).
 */
export interface FastBuffer extends Buffer {
  latin1Write (s: string, offset: number): number
  utf8Write (s: string, offset: number): number
  base64urlWrite (s: string, offset: number): number
  utf8Slice (start: number, end: number): string
  base64urlSlice (start: number, end: number): string
}
