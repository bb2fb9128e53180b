import { execFile } from 'node:child_process'
import { existsSync } from 'node:fs'
import { readdir, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import puppeteer, { type Browser } from 'puppeteer-core'
import { withBuildLock } from './build-lock.ts'
import { packageDir } from './workspace.ts'

const exec = promisify(execFile)

/** The browsers the tests drive: Debian's `chromium` and `firefox-esr` packages. */
export type BrowserName = 'chromium' | 'firefox'

/** Where each is looked for; `CHROMIUM_PATH` / `FIREFOX_PATH` name another one. */
const EXECUTABLES: Record<BrowserName, { env: string; paths: string[]; apt: string }> = {
  chromium: { env: 'CHROMIUM_PATH', paths: ['/usr/bin/chromium'], apt: 'chromium' },
  firefox: { env: 'FIREFOX_PATH', paths: ['/usr/bin/firefox-esr', '/usr/bin/firefox'], apt: 'firefox-esr' },
}

export interface LaunchedBrowser {
  browser: Browser
  /** Closes the browser and removes its temporary profile. */
  close(): Promise<void>
}

/**
 * A headless Chromium or Firefox driven by puppeteer-core (Chromium over CDP, Firefox over
 * WebDriver BiDi), or the reason to skip when none is installed (a browser test then skips with
 * it rather than failing on a machine without that browser).
 */
export async function launchBrowser(
  options: { browser?: BrowserName } = {},
): Promise<LaunchedBrowser | { skip: string }> {
  const name = options.browser ?? 'chromium'
  const { env, paths, apt } = EXECUTABLES[name]
  const candidates = process.env[env] ? [process.env[env]] : paths
  const executablePath = candidates.find((path) => existsSync(path))
  if (executablePath === undefined) {
    return {
      skip: `no ${name} at ${candidates.join(' or ')}: install it (apt-get install ${apt}) or set ${env}`,
    }
  }
  if (name === 'firefox') {
    const browser = await puppeteer.launch({
      browser: 'firefox',
      executablePath,
      headless: true,
      timeout: 60_000,
    })
    return { browser, close: () => browser.close() }
  }
  const args = ['--disable-dev-shm-usage', '--no-first-run', '--no-default-browser-check']
  // Chromium refuses to run as root with its sandbox on.
  if (process.getuid?.() === 0) args.push('--no-sandbox')
  const browser = await puppeteer.launch({
    executablePath,
    headless: true,
    pipe: true,
    args,
    timeout: 60_000,
  })
  return { browser, close: () => browser.close() }
}

/**
 * The dashboard page built into `packages/dashboard/dist/web` (its folder is returned): `vite build`
 * runs, under the workspace build lock, when the page is missing or older than its sources, so that
 * tests from a fresh clone get a page and tests after an edit get the edited one.
 */
export async function buildDashboard(): Promise<string> {
  const dir = packageDir('@meshnet/dashboard')
  const out = join(dir, 'dist', 'web')
  if (await builtPageIsCurrent(dir)) return out
  return withBuildLock(async () => {
    // Another test may have built it while this one waited for the lock.
    if (!(await builtPageIsCurrent(dir))) {
      await exec(join(dir, 'node_modules', '.bin', 'vite'), ['build'], { cwd: dir, timeout: 180_000 })
    }
    return out
  })
}

/** True when dist/web/index.html is newer than every file of web/ and the Vite config. */
async function builtPageIsCurrent(dir: string): Promise<boolean> {
  const built = await stat(join(dir, 'dist', 'web', 'index.html')).then(
    (s) => s.mtimeMs,
    () => null,
  )
  if (built === null) return false
  const sources = [join(dir, 'vite.config.ts')]
  for (const entry of await readdir(join(dir, 'web'), { recursive: true, withFileTypes: true })) {
    if (entry.isFile()) sources.push(join(entry.parentPath, entry.name))
  }
  for (const file of sources) if ((await stat(file)).mtimeMs > built) return false
  return true
}
