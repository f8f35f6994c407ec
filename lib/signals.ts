/**
 * Resolves with the name of the first SIGTERM or SIGINT. A second signal exits at once (130): for a
 * daemon whose every write is one transaction, dying mid-way rolls that transaction back, so "now"
 * is still safe.
 */
export function stopSignal (): Promise<string> {
  return new Promise<string>((resolve) => {
    const onSignal = (sig: string): void => {
      process.once(sig, () => process.exit(130))
      resolve(sig)
    }
    process.once('SIGTERM', () => onSignal('SIGTERM'))
    process.once('SIGINT', () => onSignal('SIGINT'))
  })
}
