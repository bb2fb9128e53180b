import { execFile } from 'node:child_process'
import { mkdir, readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { withBuildLock } from './build-lock.ts'
import { meshnetClosure, packageDir, REPO_ROOT } from './workspace.ts'

const exec = promisify(execFile)

/**
 * Builds (tsup, through turbo) and packs (`pnpm pack`) `roots` and every @meshnet package they need,
 * as they would be published. Returns each package's tarball as a `file:` spec.
 */
export async function packWorkspace(
  roots: readonly string[],
  destination: string,
): Promise<Record<string, string>> {
  const env = { ...process.env, TURBO_TELEMETRY_DISABLED: '1', TURBO_NO_UPDATE_NOTIFIER: '1' }
  const seen = new Set<string>()
  const packages: string[] = []
  for (const root of roots)
    for (const name of await meshnetClosure(root, seen)) if (!packages.includes(name)) packages.push(name)
  // Built and packed while no other test builds (see withBuildLock).
  return withBuildLock(async () => {
    await exec(
      join(REPO_ROOT, 'node_modules', '.bin', 'turbo'),
      ['run', 'build', ...roots.map((name) => `--filter=${name}...`), '--output-logs=errors-only'],
      { cwd: REPO_ROOT, env, timeout: 300_000 },
    )
    await mkdir(destination, { recursive: true })
    const packed: Record<string, string> = {}
    for (const name of packages) {
      const before = new Set(await readdir(destination))
      await exec('pnpm', ['pack', '--pack-destination', destination], { cwd: packageDir(name), env })
      const file = (await readdir(destination)).find((f) => !before.has(f))
      if (file === undefined) throw new Error(`pnpm pack of ${name} wrote no tarball`)
      packed[name] = `file:${join(destination, file)}`
    }
    return packed
  })
}
