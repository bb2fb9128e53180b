import { closeSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs'
import { DataDirInUseError, FileAccessError } from '@meshnet/core'

/** A held lock file; `release()` removes it. */
export interface DataDirLock {
  readonly path: string
  /** Pid of the process that held the lock before and ended without releasing it (killed, crashed). */
  readonly takenOverFrom?: number
  release(): void
}

/**
 * Takes an exclusive lock on a data directory by creating `path` (O_EXCL) with our pid in it.
 * A lock left by a process that no longer runs is taken over; a live holder gives
 * DataDirInUseError naming its pid.
 */
export function acquireLock(path: string, dataDir: string): DataDirLock {
  let takenOverFrom: number | undefined
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const fd = openSync(path, 'wx', 0o600)
      writeSync(fd, `${process.pid}\n`)
      closeSync(fd)
      let released = false
      return {
        path,
        ...(takenOverFrom === undefined ? {} : { takenOverFrom }),
        release() {
          if (released) return
          released = true
          rmSync(path, { force: true })
        },
      }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
        throw new FileAccessError(`cannot create lock file ${path}: ${(err as Error).message}`, {
          cause: err,
        })
      }
    }
    const holder = readHolder(path)
    if (holder !== undefined && holder !== process.pid && isAlive(holder)) {
      throw new DataDirInUseError(`data dir ${dataDir} in use by pid ${holder}`, {
        details: { pid: holder, lockFile: path },
        hint: 'stop that process, or give this one its own --data-dir',
      })
    }
    if (holder === process.pid) {
      throw new DataDirInUseError(`data dir ${dataDir} is already open in this process (pid ${holder})`, {
        details: { pid: holder, lockFile: path },
        hint: 'close the other store first',
      })
    }
    // Stale: the holder is gone (or the file is unreadable). Remove it and try again.
    takenOverFrom = holder ?? takenOverFrom
    rmSync(path, { force: true })
  }
  throw new DataDirInUseError(`could not lock data dir ${dataDir}: lock file ${path} keeps reappearing`)
}

function readHolder(path: string): number | undefined {
  try {
    const pid = Number.parseInt(readFileSync(path, 'utf8').trim(), 10)
    return Number.isSafeInteger(pid) && pid > 0 ? pid : undefined
  } catch {
    return undefined
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}
