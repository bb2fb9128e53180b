import { mkdir, rm, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { REPO_ROOT } from './workspace.ts'

/** A lock older than this was left by a process that died holding it. */
const STALE_MS = 15 * 60_000

/**
 * Runs `task` while no other test process builds or packs the workspace: tsup empties a package's
 * `dist` before it writes it again, so a build running beside another test's build or pack (the
 * SDK-app test and the registry test on a fresh clone) could see half a package. The lock is a
 * directory (`mkdir` is atomic) in the workspace's node_modules.
 */
export async function withBuildLock<T>(task: () => Promise<T>): Promise<T> {
  const lock = join(REPO_ROOT, 'node_modules', '.meshnet-build.lock')
  const deadline = Date.now() + STALE_MS
  for (;;) {
    try {
      await mkdir(lock)
      break
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
      const since = await stat(lock).then(
        (s) => Date.now() - s.mtimeMs,
        () => 0,
      )
      if (since > STALE_MS) await rm(lock, { recursive: true, force: true })
      else if (Date.now() > deadline) {
        throw new Error(`timed out waiting for another test's workspace build to end (${lock})`)
      } else await sleep(250)
    }
  }
  try {
    return await task()
  } finally {
    await rm(lock, { recursive: true, force: true })
  }
}
