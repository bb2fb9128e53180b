import type { DatabaseSync } from 'node:sqlite'
import type { Logger } from '@meshnet/core'
import { dataDirLayout } from '@meshnet/identity'
import type { DataDirLock } from './lock.ts'
import { MIGRATIONS } from './migrations.ts'
import { type OpenReport, openSqlite } from './sqlite.ts'

// SQLite's primary result codes for a disk that cannot take a write.
const SQLITE_READONLY = 8
const SQLITE_IOERR = 10
const SQLITE_FULL = 13

/** Score a peer starts with, on a 0..1 scale. */
export const INITIAL_TRUST = 0.5

export interface OpenStoreOptions {
  /** The node's data directory (the database is `mesh_state.db` inside it). */
  dataDir: string
  logger?: Logger
  /** Clock, in milliseconds; tests pass their own. */
  now?: () => number
}

export interface PeerRecord {
  peerId: string
  addresses: string[]
  capabilities: Record<string, unknown>
  firstSeen: number
  lastSeen: number
}

export interface TrustEvent {
  peerId: string
  at: number
  kind: string
  delta: number
  /** Score after the event. */
  score: number
  reason: string
}

export type JobStatus = 'queued' | 'running' | 'completed' | 'failed' | 'cancelled'

export interface JobRecord {
  id: string
  poolId: string | null
  model: string
  mode: string
  status: JobStatus
  createdAt: number
  finishedAt: number | null
  error: string | null
  stats: Record<string, unknown>
}

/**
 * The node's durable state. One process at a time holds a data directory's store; the database is
 * checked on open and a corrupt one is moved aside (never deleted) and replaced by a fresh one.
 */
export class MeshStore {
  readonly path: string
  readonly report: OpenReport
  readonly #db: DatabaseSync
  readonly #lock: DataDirLock
  readonly #now: () => number
  readonly #logger: Logger | undefined
  /** Disk errors already logged, by what was being written and SQLite's error code. */
  readonly #reported = new Set<string>()
  #writeFailures = 0
  #closed = false

  /** Use {@link openStore}. */
  constructor(
    db: DatabaseSync,
    lock: DataDirLock,
    path: string,
    report: OpenReport,
    now: () => number,
    logger?: Logger,
  ) {
    this.#db = db
    this.#lock = lock
    this.path = path
    this.report = report
    this.#now = now
    this.#logger = logger
  }

  /** Writes that failed on a disk error (full, read-only, I/O) and were dropped. */
  get writeFailures(): number {
    return this.#writeFailures
  }

  /**
   * Runs a write whose loss the node survives (a cache row): on a disk error (SQLite FULL, IOERR,
   * READONLY) it is dropped, counted and logged once per kind, instead of throwing into the event
   * handler that made it, which would end the process.
   */
  #bestEffort(what: string, write: () => void): void {
    try {
      write()
    } catch (err) {
      const code = (err as { errcode?: number }).errcode
      const primary = code === undefined ? -1 : code & 0xff
      if (primary !== SQLITE_FULL && primary !== SQLITE_IOERR && primary !== SQLITE_READONLY) throw err
      this.#writeFailures++
      const key = `${what}:${primary}`
      if (!this.#reported.has(key)) {
        this.#reported.add(key)
        this.#logger?.warn(
          { err: (err as Error).message, path: this.path },
          `could not write ${what} to the state database; carrying on without it (further failures are counted, not logged)`,
        )
      }
    }
  }

  /** Records that a peer was seen now, merging its addresses and replacing its capabilities if given. */
  upsertPeer(
    peerId: string,
    update: { addresses?: string[]; capabilities?: Record<string, unknown> } = {},
  ): PeerRecord {
    const now = this.#now()
    const existing = this.getPeer(peerId)
    const addresses = [...new Set([...(update.addresses ?? []), ...(existing?.addresses ?? [])])].slice(0, 32)
    const capabilities = update.capabilities ?? existing?.capabilities ?? {}
    // Peer rows are a cache of what discovery and the ring report: losing one to a full disk costs
    // nothing the next report does not bring back.
    this.#bestEffort('a peer', () =>
      this.#db
        .prepare(
          `INSERT INTO peers (peer_id, addresses, capabilities, first_seen, last_seen)
           VALUES (?, ?, ?, ?, ?)
           ON CONFLICT (peer_id) DO UPDATE SET addresses = excluded.addresses,
             capabilities = excluded.capabilities, last_seen = excluded.last_seen`,
        )
        .run(peerId, JSON.stringify(addresses), JSON.stringify(capabilities), now, now),
    )
    return { peerId, addresses, capabilities, firstSeen: existing?.firstSeen ?? now, lastSeen: now }
  }

  getPeer(peerId: string): PeerRecord | undefined {
    const row = this.#db.prepare('SELECT * FROM peers WHERE peer_id = ?').get(peerId)
    return row === undefined ? undefined : peerFromRow(row)
  }

  /** Peers, most recently seen first. */
  listPeers(limit = 1000): PeerRecord[] {
    return this.#db.prepare('SELECT * FROM peers ORDER BY last_seen DESC LIMIT ?').all(limit).map(peerFromRow)
  }

  /** A peer's trust score (INITIAL_TRUST when nothing is known). */
  trustScore(peerId: string): number {
    const row = this.#db.prepare('SELECT score FROM trust WHERE peer_id = ?').get(peerId) as
      | { score: number }
      | undefined
    return row?.score ?? INITIAL_TRUST
  }

  /** Moves a peer's score by `delta` (clamped to 0..1) and records why. Returns the event. */
  recordTrustEvent(peerId: string, event: { kind: string; delta: number; reason?: string }): TrustEvent {
    if (!Number.isFinite(event.delta)) throw new RangeError(`trust delta must be finite, got ${event.delta}`)
    const at = this.#now()
    this.#db.exec('BEGIN IMMEDIATE')
    try {
      const score = Math.min(1, Math.max(0, this.trustScore(peerId) + event.delta))
      this.#db
        .prepare(
          `INSERT INTO trust (peer_id, score, updated_at) VALUES (?, ?, ?)
           ON CONFLICT (peer_id) DO UPDATE SET score = excluded.score, updated_at = excluded.updated_at`,
        )
        .run(peerId, score, at)
      this.#db
        .prepare(
          'INSERT INTO trust_events (peer_id, at, kind, delta, score, reason) VALUES (?, ?, ?, ?, ?, ?)',
        )
        .run(peerId, at, event.kind, event.delta, score, event.reason ?? '')
      this.#db.exec('COMMIT')
      return { peerId, at, kind: event.kind, delta: event.delta, score, reason: event.reason ?? '' }
    } catch (err) {
      this.#db.exec('ROLLBACK')
      throw err
    }
  }

  /** The most recent trust events for a peer, newest first. */
  trustEvents(peerId: string, limit = 100): TrustEvent[] {
    return this.#db
      .prepare('SELECT * FROM trust_events WHERE peer_id = ? ORDER BY at DESC, id DESC LIMIT ?')
      .all(peerId, limit)
      .map((row) => ({
        peerId: String(row.peer_id),
        at: Number(row.at),
        kind: String(row.kind),
        delta: Number(row.delta),
        score: Number(row.score),
        reason: String(row.reason),
      }))
  }

  createJob(job: { id: string; poolId?: string | null; model: string; mode: string }): JobRecord {
    const createdAt = this.#now()
    this.#db
      .prepare('INSERT INTO jobs (id, pool_id, model, mode, status, created_at) VALUES (?, ?, ?, ?, ?, ?)')
      .run(job.id, job.poolId ?? null, job.model, job.mode, 'queued', createdAt)
    return this.getJob(job.id)!
  }

  /** Updates a job's status and merges `stats` into what it had. */
  updateJob(
    id: string,
    update: { status?: JobStatus; error?: string | null; stats?: Record<string, unknown> },
  ): JobRecord {
    const job = this.getJob(id)
    if (job === undefined) throw new RangeError(`no job ${id} in ${this.path}`)
    const status = update.status ?? job.status
    const finished = status === 'completed' || status === 'failed' || status === 'cancelled'
    this.#db
      .prepare('UPDATE jobs SET status = ?, error = ?, stats = ?, finished_at = ? WHERE id = ?')
      .run(
        status,
        update.error === undefined ? job.error : update.error,
        JSON.stringify({ ...job.stats, ...update.stats }),
        finished ? (job.finishedAt ?? this.#now()) : null,
        id,
      )
    return this.getJob(id)!
  }

  getJob(id: string): JobRecord | undefined {
    const row = this.#db.prepare('SELECT * FROM jobs WHERE id = ?').get(id)
    return row === undefined ? undefined : jobFromRow(row)
  }

  /** Jobs, newest first. */
  listJobs(limit = 100): JobRecord[] {
    return this.#db
      .prepare('SELECT * FROM jobs ORDER BY created_at DESC, id LIMIT ?')
      .all(limit)
      .map(jobFromRow)
  }

  /** Closes the database and releases the data-dir lock. Safe to call twice. */
  close(): void {
    if (this.#closed) return
    this.#closed = true
    try {
      this.#db.close()
    } finally {
      this.#lock.release()
    }
  }
}

type Row = Record<string, unknown>

function peerFromRow(row: Row): PeerRecord {
  return {
    peerId: String(row.peer_id),
    addresses: JSON.parse(String(row.addresses)),
    capabilities: JSON.parse(String(row.capabilities)),
    firstSeen: Number(row.first_seen),
    lastSeen: Number(row.last_seen),
  }
}

function jobFromRow(row: Row): JobRecord {
  return {
    id: String(row.id),
    poolId: row.pool_id === null ? null : String(row.pool_id),
    model: String(row.model),
    mode: String(row.mode),
    status: String(row.status) as JobStatus,
    createdAt: Number(row.created_at),
    finishedAt: row.finished_at === null ? null : Number(row.finished_at),
    error: row.error === null ? null : String(row.error),
    stats: JSON.parse(String(row.stats)),
  }
}

/**
 * Opens `<dataDir>/mesh_state.db`, creating or migrating it. Takes the data-dir lock first (a second
 * process gets DataDirInUseError). A database that fails its integrity check is renamed to
 * `mesh_state.db.corrupt-<timestamp>` (with its -wal and -shm files) and a fresh one is created;
 * the identity key is never touched. Jobs still `queued` or `running` were left so by the process
 * that held the data dir before (one process at a time holds it): they are marked failed.
 */
export function openStore(options: OpenStoreOptions): MeshStore {
  const layout = dataDirLayout(options.dataDir)
  const now = options.now ?? Date.now
  const { db, lock, report } = openSqlite({
    path: layout.stateDb,
    lockPath: layout.lockFile,
    dataDir: layout.root,
    migrations: MIGRATIONS,
    losesOnRecovery: 'known peers, trust scores and job history',
    ...(options.logger ? { logger: options.logger } : {}),
    now,
  })
  failInterruptedJobs(db, now(), lock.takenOverFrom, options.logger)
  return new MeshStore(db, lock, layout.stateDb, report, now, options.logger)
}

/**
 * Marks failed the jobs that a previous process left unfinished, naming its pid when its lock file
 * said. A database that cannot take the write is opened anyway: the rows stay as they were.
 */
function failInterruptedJobs(db: DatabaseSync, at: number, pid: number | undefined, logger?: Logger): void {
  const error = `the agent stopped while it ran${pid === undefined ? '' : ` (pid ${pid})`}`
  try {
    const { changes } = db
      .prepare(
        `UPDATE jobs SET status = 'failed', error = ?, finished_at = ? WHERE status IN ('queued', 'running')`,
      )
      .run(error, at)
    if (Number(changes) > 0) {
      logger?.warn({ jobs: Number(changes), pid }, `marked ${changes} unfinished job(s) failed: ${error}`)
    }
  } catch (err) {
    logger?.warn({ err: (err as Error).message }, 'could not mark the jobs of a stopped agent failed')
  }
}
