import { randomBytes } from 'node:crypto'
import { closeSync, fsyncSync, mkdirSync, openSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import { link, mkdir, open, rename, rm } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { FileAccessError } from '@meshnet/core'

export interface WriteFileOptions {
  /** File mode for a new file; default 0o644. */
  mode?: number
}

/**
 * Writes `data` to `path` so that readers see either the old file or the whole new one: the bytes go
 * to a temporary file in the same directory, are flushed to disk, and the file is renamed over
 * `path`.
 */
export async function writeFileAtomic(
  path: string,
  data: string | Uint8Array,
  options: WriteFileOptions = {},
): Promise<void> {
  const dir = dirname(path)
  await mkdir(dir, { recursive: true })
  const tmp = join(dir, `.${randomBytes(6).toString('hex')}.tmp`)
  try {
    const handle = await open(tmp, 'wx', options.mode ?? 0o644)
    try {
      await handle.writeFile(data)
      await handle.sync()
    } finally {
      await handle.close()
    }
    await rename(tmp, path)
  } catch (err) {
    await rm(tmp, { force: true })
    throw new FileAccessError(`could not write ${path}: ${(err as Error).message}`, { cause: err })
  }
}

/**
 * {@link writeFileAtomic} in one go on the calling thread, for a small file that must be on disk
 * before anything else happens (the files that say an agent is up). Each step of the asynchronous
 * one waits its turn on the event loop: 16 agents starting at once on two cores took 0.1–12 s to
 * write their 70-byte control token and agent.json that way; these syscalls take a millisecond.
 */
export function writeFileAtomicSync(
  path: string,
  data: string | Uint8Array,
  options: WriteFileOptions = {},
): void {
  const dir = dirname(path)
  const tmp = join(dir, `.${randomBytes(6).toString('hex')}.tmp`)
  try {
    mkdirSync(dir, { recursive: true })
    const fd = openSync(tmp, 'wx', options.mode ?? 0o644)
    try {
      writeFileSync(fd, data)
      fsyncSync(fd)
    } finally {
      closeSync(fd)
    }
    renameSync(tmp, path)
  } catch (err) {
    rmSync(tmp, { force: true })
    throw new FileAccessError(`could not write ${path}: ${(err as Error).message}`, { cause: err })
  }
}

/**
 * Creates `path` with `data` only if no file is there yet (O_EXCL), flushed to disk. Returns false,
 * writing nothing, when the file already exists. Used for files that must never be overwritten.
 */
export async function writeFileExclusive(
  path: string,
  data: string | Uint8Array,
  options: WriteFileOptions = {},
): Promise<boolean> {
  await mkdir(dirname(path), { recursive: true })
  // Write to a temporary file first, then link it into place: link() fails if `path` exists, so a
  // crash can never leave a half-written file at `path`.
  const tmp = join(dirname(path), `.${randomBytes(6).toString('hex')}.tmp`)
  const handle = await open(tmp, 'wx', options.mode ?? 0o644)
  try {
    await handle.writeFile(data)
    await handle.sync()
  } finally {
    await handle.close()
  }
  try {
    await link(tmp, path)
    return true
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false
    throw new FileAccessError(`could not create ${path}: ${(err as Error).message}`, { cause: err })
  } finally {
    await rm(tmp, { force: true })
  }
}
