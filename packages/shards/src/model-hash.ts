import { createHash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { stat } from 'node:fs/promises'
import { openGGUF } from '@meshnet/gguf'

const cache = new Map<string, { key: string; hash: Promise<ModelHash> }>()

/** A model's identity across the ring: the SHA-256 of its bytes, and how many there are. */
export interface ModelHash {
  sha256: string
  bytes: number
  /** The files hashed: the path, or every part of a split model in order. */
  parts: readonly string[]
}

/**
 * Hex SHA-256 of a model: of its file, or of all parts of a split model one after another (so two
 * members agree only when every part is the same). Remembered per path while the size,
 * modification time and inode of every part stay the same (a 4 GB model hashes once, not at
 * every session).
 */
export async function modelSha256(path: string, signal?: AbortSignal): Promise<ModelHash> {
  const parts = await modelParts(path)
  const infos = await Promise.all(parts.map((p) => stat(p)))
  const key = infos.map((i) => `${i.size}:${i.mtimeMs}:${i.ino}`).join('/')
  const known = cache.get(path)
  if (known?.key === key) return known.hash
  const hash = (async () => {
    const digest = createHash('sha256')
    for (const part of parts) {
      for await (const chunk of createReadStream(part, {
        highWaterMark: 1 << 20,
        ...(signal ? { signal } : {}),
      })) {
        digest.update(chunk as Buffer)
      }
    }
    return { sha256: digest.digest('hex'), bytes: infos.reduce((n, i) => n + i.size, 0), parts }
  })()
  cache.set(path, { key, hash })
  hash.catch(() => {
    if (cache.get(path)?.hash === hash) cache.delete(path)
  })
  return hash
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
