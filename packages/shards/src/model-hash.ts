import { createHash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { readFile, stat } from 'node:fs/promises'
import { openGGUF } from '@meshnet/gguf'
import { writeFileAtomic } from '@meshnet/identity'
import { z } from 'zod'

const cache = new Map<string, { key: string; hash: Promise<ModelHash> }>()

/** A model's identity across the ring: the SHA-256 of its bytes, and how many there are. */
export interface ModelHash {
  sha256: string
  bytes: number
  /** The files hashed: the path, or every part of a split model in order. */
  parts: readonly string[]
}

export interface ModelHashOptions {
  signal?: AbortSignal | undefined
  /**
   * A JSON file that remembers hashes across processes (the agent keeps one in its data dir), by
   * path, while the size, modification time and inode of every part stay the same: a restarted
   * agent does not read a 40 GB model again. A file changed in place with its times put back is
   * not noticed; delete the cache file to hash again.
   */
  cacheFile?: string | undefined
}

/**
 * Hex SHA-256 of a model: of its file, or of all parts of a split model one after another (so two
 * members agree only when every part is the same). Remembered per path while the size,
 * modification time and inode of every part stay the same (a 4 GB model hashes once, not at
 * every session), in this process and, with `cacheFile`, across processes.
 */
export async function modelSha256(
  path: string,
  options: ModelHashOptions | AbortSignal = {},
): Promise<ModelHash> {
  const { signal, cacheFile } =
    options instanceof AbortSignal ? { signal: options, cacheFile: undefined } : options
  const parts = await modelParts(path)
  const infos = await Promise.all(parts.map((p) => stat(p)))
  const key = infos.map((i) => `${i.size}:${i.mtimeMs}:${i.ino}`).join('/')
  const known = cache.get(path)
  if (known?.key === key) return known.hash
  const hash = (async () => {
    const bytes = infos.reduce((n, i) => n + i.size, 0)
    const stored = cacheFile === undefined ? undefined : (await readHashCache(cacheFile))[path]
    if (stored?.key === key) return { sha256: stored.sha256, bytes, parts }
    const digest = createHash('sha256')
    for (const part of parts) {
      for await (const chunk of createReadStream(part, {
        highWaterMark: 1 << 20,
        ...(signal ? { signal } : {}),
      })) {
        digest.update(chunk as Buffer)
      }
    }
    const sha256 = digest.digest('hex')
    if (cacheFile !== undefined) await writeHashCache(cacheFile, path, { key, sha256 })
    return { sha256, bytes, parts }
  })()
  cache.set(path, { key, hash })
  hash.catch(() => {
    if (cache.get(path)?.hash === hash) cache.delete(path)
  })
  return hash
}

const hashCacheSchema = z.record(
  z.string().max(4096),
  z.strictObject({ key: z.string().max(4096), sha256: z.string().regex(/^[0-9a-f]{64}$/) }),
)

/** The cache's entries; an absent, unreadable or damaged file is an empty cache (it is only a cache). */
async function readHashCache(file: string): Promise<z.infer<typeof hashCacheSchema>> {
  try {
    const parsed = hashCacheSchema.safeParse(JSON.parse(await readFile(file, 'utf8')))
    return parsed.success ? parsed.data : {}
  } catch {
    return {}
  }
}

/** Records one entry (at most 64 are kept); a failed write only costs a hash next time. */
async function writeHashCache(
  file: string,
  path: string,
  entry: { key: string; sha256: string },
): Promise<void> {
  const entries = { ...(await readHashCache(file)), [path]: entry }
  const kept = Object.fromEntries(Object.entries(entries).slice(-64))
  await writeFileAtomic(file, `${JSON.stringify(kept, null, 2)}\n`, { mode: 0o600 }).catch(() => {})
}

/** Hex SHA-256 of a model file (all parts of a split model); see `modelSha256`. */
export async function fileSha256(path: string, signal?: AbortSignal): Promise<string> {
  return (await modelSha256(path, signal)).sha256
}

/** The files of a model: the parts of a split model, else the path itself (also when it is not GGUF). */
async function modelParts(path: string): Promise<readonly string[]> {
  if (!/-00001-of-\d{5}\.gguf$/.test(path)) return [path]
  const file = await openGGUF(path)
  try {
    return file.parts
  } finally {
    await file.close()
  }
}
