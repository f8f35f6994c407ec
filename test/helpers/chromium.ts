import { accessSync, constants } from 'node:fs'
import { chromium, type Browser } from 'playwright-core'

/** Debian's `chromium` package (installed by .ci/run when missing). */
export const CHROMIUM_PATH = '/usr/bin/chromium'

/** Headless, and nothing that reaches the network or the profile on its own. */
export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run'
]

/** Whether the browser binary is there and executable. */
export function chromiumAvailable (): boolean {
  try {
    accessSync(CHROMIUM_PATH, constants.X_OK)
    return true
  } catch {
    return false
  }
}

/**
 * A skip reason for tests that need the browser, or false when it is there. With CI=true a missing
 * browser is an error, not a skip (.ci/run installs the `chromium` package).
 */
export function chromiumSkip (): string | false {
  if (chromiumAvailable()) return false
  const why = `${CHROMIUM_PATH} not found (Debian package \`chromium\`)`
  if (process.env.CI === 'true') throw new Error(`Chromium is required when CI=true: ${why}`)
  return `${why} (required only when CI=true)`
}

/** Starts headless Chromium; the caller closes it (`browser.close()`). */
export async function launchChromium (): Promise<Browser> {
  return await chromium.launch({ executablePath: CHROMIUM_PATH, args: CHROMIUM_ARGS })
}
