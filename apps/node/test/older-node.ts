import { execFile } from 'node:child_process'
import { promisify } from 'node:util'

/** The machine's own Node.js when it is older than the 24 the programs need (Debian's is 20), else undefined. */
export async function olderNode(
  path = '/usr/bin/node',
): Promise<{ path: string; version: string } | undefined> {
  try {
    const { stdout } = await promisify(execFile)(path, ['--version'], { timeout: 10_000 })
    const version = stdout.trim().replace(/^v/, '')
    return Number(version.split('.')[0]) < 24 ? { path, version } : undefined
  } catch {
    return undefined
  }
}
