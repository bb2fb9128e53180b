import { closeSync, existsSync, openSync, readSync, renameSync } from 'node:fs'
import { basename } from 'node:path'
import { DatabaseSync } from 'node:sqlite'
import { type Logger, silentLogger } from '@meshnet/core'
import { acquireLock, type DataDirLock } from './lock.ts'
import { migrate } from './migrations.ts'

const SQLITE_HEADER = Buffer.from('SQLite format 3\u0000', 'latin1')

/** What happened when a database was opened. */
export interface OpenReport {
  /** Set when the old database was unusable and moved aside. */
  recoveredFrom?: { movedTo: string; problem: string }
  migratedFrom: number
  schemaVersion: number
}

export interface OpenSqliteOptions {
  /** The database file. */
  path: string
  /** Lock file taken before opening; a second process gets DataDirInUseError. */
  lockPath: string
  /** The directory the lock protects (named in the error). */
  dataDir: string
  /** Schema migrations, applied in order (see `migrate`). */
  migrations: readonly string[]
  /** What a fresh database loses, for the recovery warning ("known peers and trust scores"). */
  losesOnRecovery: string
  /** How to upgrade when the schema is too new ("upgrade Meshnet"). */
  upgradeHint?: string
  logger?: Logger
  now?: () => number
}

export interface OpenedSqlite {
  db: DatabaseSync
  lock: DataDirLock
  report: OpenReport
}

/**
 * Takes the lock, opens `path` in WAL mode and proves it usable (header and `PRAGMA
 * integrity_check`). A database that fails is moved aside as `<name>.corrupt-<timestamp>` (with its
 * -wal and -shm files), never deleted, a fresh one is created and a warning logged. Then the
 * migrations run. On any error the lock is released and nothing is left open.
 */
export function openSqlite(options: OpenSqliteOptions): OpenedSqlite {
  const logger = options.logger ?? silentLogger()
  const now = options.now ?? Date.now
  const name = basename(options.path)
  const lock = acquireLock(options.lockPath, options.dataDir)
  try {
    let recoveredFrom: OpenReport['recoveredFrom']
    let db: DatabaseSync
    try {
      db = openChecked(options.path)
    } catch (err) {
      const movedTo = `${options.path}.corrupt-${new Date(now()).toISOString().replace(/[:.]/g, '-')}`
      const problem = (err as Error).message
      for (const suffix of ['', '-wal', '-shm']) {
        if (existsSync(options.path + suffix)) renameSync(options.path + suffix, movedTo + suffix)
      }
      recoveredFrom = { movedTo, problem }
      logger.warn(
        { problem, movedTo },
        `${name} was corrupt (${problem}); moved it aside and started a fresh database (${options.losesOnRecovery} are reset; nothing else is touched)`,
      )
      db = openChecked(options.path)
    }
    let migration: { from: number; to: number }
    try {
      migration = migrate(db, options.migrations, name, options.upgradeHint)
    } catch (err) {
      db.close()
      throw err
    }
    return {
      db,
      lock,
      report: {
        ...(recoveredFrom ? { recoveredFrom } : {}),
        migratedFrom: migration.from,
        schemaVersion: migration.to,
      },
    }
  } catch (err) {
    lock.release()
    throw err
  }
}

/** Opens the database and proves it usable; throws (with the handle closed) when it is not. */
function openChecked(path: string): DatabaseSync {
  if (existsSync(path)) checkHeader(path)
  const db = new DatabaseSync(path)
  try {
    db.exec('PRAGMA busy_timeout = 5000')
    db.exec('PRAGMA journal_mode = WAL')
    db.exec('PRAGMA synchronous = NORMAL')
    const rows = db.prepare('PRAGMA integrity_check').all() as Array<{ integrity_check: string }>
    const verdict = rows.map((row) => row.integrity_check)
    if (verdict.length !== 1 || verdict[0] !== 'ok') {
      throw new Error(`integrity check failed: ${verdict.slice(0, 3).join('; ')}`)
    }
    return db
  } catch (err) {
    db.close()
    throw err
  }
}

function checkHeader(path: string): void {
  const fd = openSync(path, 'r')
  try {
    const header = Buffer.alloc(16)
    const read = readSync(fd, header, 0, 16, 0)
    if (read === 0) return // an empty file is a valid new database
    if (read < 16 || !header.equals(SQLITE_HEADER)) throw new Error('not an SQLite database (bad header)')
  } finally {
    closeSync(fd)
  }
}
