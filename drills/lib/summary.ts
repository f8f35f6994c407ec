/**
 * The one summary line a drill prints, and its exit code. `check` records a promise the drill makes;
 * `finish` prints `DRILL <name>: PASS|FAIL <figures> [broken: ...]` and exits.
 */
export class Drill {
  readonly name: string
  readonly figures: Record<string, string | number> = {}
  readonly broken: string[] = []
  readonly started = Date.now()
  readonly #cleanups: Array<() => Promise<void> | void> = []

  constructor (name: string) {
    this.name = name
  }

  /** Records a figure for the summary line. */
  figure (key: string, value: string | number): void {
    this.figures[key] = value
  }

  /** A promise of the drill: false adds `what` to the broken list. */
  check (ok: boolean, what: string): void {
    if (!ok) this.broken.push(what)
  }

  /** Run at the end (last registered first), whatever happened. */
  cleanup (fn: () => Promise<void> | void): void {
    this.#cleanups.push(fn)
  }

  log (msg: string): void {
    console.error(`[${this.name}] ${msg}`)
  }

  /** Runs `body`, then the cleanups, prints the summary line and exits. */
  async run (body: (d: Drill) => Promise<void>): Promise<never> {
    let crash: unknown
    try {
      await body(this)
    } catch (err) {
      crash = err
      this.broken.push(`crashed: ${err instanceof Error ? err.stack ?? err.message : String(err)}`)
    }
    for (const fn of this.#cleanups.reverse()) {
      try { await fn() } catch (err) { this.log(`cleanup failed: ${String(err)}`) }
    }
    const figs = Object.entries(this.figures).map(([k, v]) => `${k}=${v}`).join(' ')
    const secs = ((Date.now() - this.started) / 1000).toFixed(0)
    const ok = this.broken.length === 0 && crash === undefined
    console.log(`DRILL ${this.name}: ${ok ? 'PASS' : 'FAIL'} ${figs} time=${secs}s${ok ? '' : ` broken: ${this.broken.join('; ')}`}`)
    process.exit(ok ? 0 : 1)
  }
}
