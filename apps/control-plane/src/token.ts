import { randomBytes } from 'node:crypto'
import { chmod, readFile, stat } from 'node:fs/promises'
import { CorruptFileError, type Logger } from '@meshnet/core'
import { writeFileExclusive } from '@meshnet/identity'

const TOKEN_PATTERN = /^[A-Za-z0-9_-]{32,256}$/

/**
 * The API's bearer token: created once in `path` (mode 0600, 32 random bytes as base64url) and
 * reused on every start, so clients configured with it keep working. A file readable by others is
 * tightened to 0600 with a warning; one that holds no token is CorruptFileError (nothing is
 * overwritten).
 */
export async function loadOrCreateToken(
  path: string,
  logger: Logger,
): Promise<{ token: string; created: boolean }> {
  const fresh = randomBytes(32).toString('base64url')
  if (await writeFileExclusive(path, `${fresh}\n`, { mode: 0o600 })) return { token: fresh, created: true }
  const token = (await readFile(path, 'utf8')).trim()
  if (!TOKEN_PATTERN.test(token)) {
    throw new CorruptFileError(`control plane token file ${path} does not hold a token`, {
      hint: 'delete it to have a new token made on the next start (clients then need the new one)',
    })
  }
  const mode = (await stat(path)).mode & 0o777
  if ((mode & 0o077) !== 0) {
    await chmod(path, 0o600)
    logger.warn({ path }, `${path} was readable by others (mode ${mode.toString(8)}); set it to 0600`)
  }
  return { token, created: false }
}
