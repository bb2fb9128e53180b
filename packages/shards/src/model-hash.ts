import { createHash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { stat } from 'node:fs/promises'

const cache = new Map<string, { key: string; hash: Promise<string> }>()

/**
 * Hex SHA-256 of a file, remembered per path while its size, modification time and inode stay the
 * same (a 4 GB model hashes once, not at every session).
 */
export async function fileSha256(path: string, signal?: AbortSignal): Promise<string> {
  const info = await stat(path)
  const key = `${info.size}:${info.mtimeMs}:${info.ino}`
  const known = cache.get(path)
  if (known?.key === key) return known.hash
  const hash = new Promise<string>((resolve, reject) => {
    const digest = createHash('sha256')
    const stream = createReadStream(path, { highWaterMark: 1 << 20, ...(signal ? { signal } : {}) })
    stream.on('data', (chunk) => digest.update(chunk))
    stream.on('error', reject)
    stream.on('end', () => resolve(digest.digest('hex')))
  })
  cache.set(path, { key, hash })
  hash.catch(() => {
    if (cache.get(path)?.hash === hash) cache.delete(path)
  })
  return hash
}
