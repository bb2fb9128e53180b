import type { DatabaseSync } from 'node:sqlite'
import type { Logger } from '@meshnet/core'
import { type DataDirLock, type JobStatus, openSqlite } from '@meshnet/store'
import {
  type ChunkRecord,
  CONTROL_PLANE_MIGRATIONS,
  type DeviceRecord,
  deviceFromRow,
  type JobRecord,
  jobFromRow,
  type OpenDbReport,
  type PoolRecord,
  poolFromRow,
  type RingMemberRecord,
} from './db-schema.ts'

export type { JobStatus } from '@meshnet/store'

/**
 * The control plane's state. Every method is synchronous: with one process holding the database
 * (the lock) and one JavaScript thread, a read followed by a write without an `await` in between
 * cannot interleave with another request.
 */
export class ControlPlaneDb {
  readonly path: string
  readonly report: OpenDbReport
  readonly #db: DatabaseSync
  readonly #lock: DataDirLock
  #closed = false

  /** Use {@link openControlPlaneDb}. */
  constructor(db: DatabaseSync, lock: DataDirLock, path: string, report: OpenDbReport) {
    this.#db = db
    this.#lock = lock
    this.path = path
    this.report = report
  }

  /** Runs `fn` in one write transaction. */
  transaction<T>(fn: () => T): T {
    this.#db.exec('BEGIN IMMEDIATE')
    try {
      const result = fn()
      this.#db.exec('COMMIT')
      return result
    } catch (err) {
      this.#db.exec('ROLLBACK')
      throw err
    }
  }

  // ---- devices ----

  /** Inserts or replaces a device; `registeredAt` is kept from the first registration. */
  putDevice(device: Omit<DeviceRecord, 'registeredAt'>): { device: DeviceRecord; created: boolean } {
    const existing = this.getDevice(device.nodeId)
    this.#db
      .prepare(
        `INSERT INTO devices (node_id, name, addresses, capabilities, registered_at, last_seen)
         VALUES (?, ?, ?, ?, ?, ?)
         ON CONFLICT (node_id) DO UPDATE SET name = excluded.name, addresses = excluded.addresses,
           capabilities = excluded.capabilities, last_seen = excluded.last_seen`,
      )
      .run(
        device.nodeId,
        device.name,
        JSON.stringify(device.addresses),
        JSON.stringify(device.capabilities),
        device.lastSeen,
        device.lastSeen,
      )
    return {
      device: { ...device, registeredAt: existing?.registeredAt ?? device.lastSeen },
      created: existing === undefined,
    }
  }

  getDevice(nodeId: string): DeviceRecord | undefined {
    const row = this.#db.prepare('SELECT * FROM devices WHERE node_id = ?').get(nodeId)
    return row === undefined ? undefined : deviceFromRow(row)
  }

  listDevices(): DeviceRecord[] {
    return this.#db.prepare('SELECT * FROM devices ORDER BY node_id').all().map(deviceFromRow)
  }

  /** Removes a device and its ring memberships; false when there was none. */
  deleteDevice(nodeId: string): boolean {
    return this.transaction(() => {
      this.#db.prepare('DELETE FROM ring_members WHERE node_id = ?').run(nodeId)
      return this.#db.prepare('DELETE FROM devices WHERE node_id = ?').run(nodeId).changes > 0
    })
  }

  countDevices(onlineSince: number): { total: number; online: number } {
    const row = this.#db
      .prepare('SELECT COUNT(*) AS total, COALESCE(SUM(last_seen >= ?), 0) AS online FROM devices')
      .get(onlineSince) as { total: number; online: number }
    return { total: Number(row.total), online: Number(row.online) }
  }

  // ---- pools and rings ----

  insertPool(pool: Omit<PoolRecord, 'revocations' | 'revocationsVersion'>): void {
    this.#db
      .prepare(
        `INSERT INTO pools (pool_id, root_public_key, registered_at, epoch, digest, updated_at)
         VALUES (?, ?, ?, ?, ?, ?)`,
      )
      .run(pool.poolId, pool.rootPublicKey, pool.registeredAt, pool.epoch, pool.digest, pool.updatedAt)
  }

  getPool(poolId: string): PoolRecord | undefined {
    const row = this.#db.prepare('SELECT * FROM pools WHERE pool_id = ?').get(poolId)
    return row === undefined ? undefined : poolFromRow(row)
  }

  listPools(): PoolRecord[] {
    return this.#db.prepare('SELECT * FROM pools ORDER BY pool_id').all().map(poolFromRow)
  }

  setRevocations(poolId: string, bytes: Uint8Array, version: number): void {
    this.#db
      .prepare('UPDATE pools SET revocations = ?, revocations_version = ? WHERE pool_id = ?')
      .run(bytes, version, poolId)
  }

  setRingState(poolId: string, state: { epoch: number; digest: string; updatedAt: number }): void {
    this.#db
      .prepare('UPDATE pools SET epoch = ?, digest = ?, updated_at = ? WHERE pool_id = ?')
      .run(state.epoch, state.digest, state.updatedAt, poolId)
  }

  putRingMember(member: RingMemberRecord): void {
    this.#db
      .prepare(
        `INSERT INTO ring_members (pool_id, node_id, role, serial, expires_at, joined_at)
         VALUES (?, ?, ?, ?, ?, ?)
         ON CONFLICT (pool_id, node_id) DO UPDATE SET role = excluded.role, serial = excluded.serial,
           expires_at = excluded.expires_at`,
      )
      .run(member.poolId, member.nodeId, member.role, member.serial, member.expiresAt, member.joinedAt)
  }

  deleteRingMember(poolId: string, nodeId: string): boolean {
    return (
      this.#db.prepare('DELETE FROM ring_members WHERE pool_id = ? AND node_id = ?').run(poolId, nodeId)
        .changes > 0
    )
  }

  /** A pool's ring members with their devices, by node id. */
  ringMembers(poolId: string): Array<RingMemberRecord & { device: DeviceRecord }> {
    return this.#db
      .prepare(
        `SELECT m.pool_id, m.role, m.serial, m.expires_at, m.joined_at, d.*
         FROM ring_members m JOIN devices d ON d.node_id = m.node_id
         WHERE m.pool_id = ? ORDER BY m.node_id`,
      )
      .all(poolId)
      .map((row) => ({
        poolId: String(row.pool_id),
        nodeId: String(row.node_id),
        role: String(row.role),
        serial: String(row.serial),
        expiresAt: Number(row.expires_at),
        joinedAt: Number(row.joined_at),
        device: deviceFromRow(row),
      }))
  }

  /** The pools whose ring a node is in. */
  ringsOf(nodeId: string): string[] {
    return this.#db
      .prepare('SELECT pool_id FROM ring_members WHERE node_id = ? ORDER BY pool_id')
      .all(nodeId)
      .map((row) => String(row.pool_id))
  }

  // ---- jobs ----

  insertJob(
    job: Pick<JobRecord, 'id' | 'poolId' | 'model' | 'mode' | 'prompt' | 'params' | 'createdAt'>,
  ): void {
    this.#db
      .prepare(
        `INSERT INTO jobs (id, pool_id, model, mode, prompt, params, status, created_at)
         VALUES (?, ?, ?, ?, ?, ?, 'queued', ?)`,
      )
      .run(job.id, job.poolId, job.model, job.mode, job.prompt, JSON.stringify(job.params), job.createdAt)
  }

  getJob(id: string): JobRecord | undefined {
    const row = this.#db.prepare('SELECT * FROM jobs WHERE id = ?').get(id)
    return row === undefined ? undefined : jobFromRow(row)
  }

  /** Marks the oldest queued job of a pool (`null`: jobs without a pool) running on `nodeId`. */
  claimJob(poolId: string | null, nodeId: string, now: number): JobRecord | undefined {
    const row = this.#db
      .prepare(
        `UPDATE jobs SET status = 'running', node_id = ?, attempts = attempts + 1, started_at = ?,
           last_activity = ?
         WHERE id = (SELECT id FROM jobs WHERE status = 'queued' AND pool_id IS ?
                     ORDER BY created_at, rowid LIMIT 1)
         RETURNING *`,
      )
      .get(nodeId, now, now, poolId)
    return row === undefined ? undefined : jobFromRow(row)
  }

  /** Appends one chunk of output to a running job and renews its lease; returns the chunk. */
  appendChunk(jobId: string, tokens: number[], text: string, now: number): ChunkRecord {
    return this.transaction(() => {
      const { lastInsertRowid } = this.#db
        .prepare('INSERT INTO job_chunks (job_id, tokens, text, at) VALUES (?, ?, ?, ?)')
        .run(jobId, JSON.stringify(tokens), text, now)
      this.#db
        .prepare('UPDATE jobs SET token_count = token_count + ?, last_activity = ? WHERE id = ?')
        .run(tokens.length, now, jobId)
      return { id: Number(lastInsertRowid), tokens, text, at: now }
    })
  }

  /** Renews a running job's lease without output (a node still working on the prompt). */
  touchJob(jobId: string, now: number): void {
    this.#db.prepare('UPDATE jobs SET last_activity = ? WHERE id = ?').run(now, jobId)
  }

  /** A job's output chunks after `afterId`, in order. */
  chunks(jobId: string, afterId = 0): ChunkRecord[] {
    return this.#db
      .prepare('SELECT * FROM job_chunks WHERE job_id = ? AND id > ? ORDER BY id')
      .all(jobId, afterId)
      .map((row) => ({
        id: Number(row.id),
        tokens: JSON.parse(String(row.tokens)) as number[],
        text: String(row.text),
        at: Number(row.at),
      }))
  }

  textLength(jobId: string): number {
    const row = this.#db
      .prepare('SELECT COALESCE(SUM(length(text)), 0) AS n FROM job_chunks WHERE job_id = ?')
      .get(jobId) as { n: number }
    return Number(row.n)
  }

  /** Ends a job (completed, failed or cancelled). */
  finishJob(
    id: string,
    status: 'completed' | 'failed' | 'cancelled',
    update: { now: number; error?: string; stats?: Record<string, unknown> },
  ): void {
    this.#db
      .prepare('UPDATE jobs SET status = ?, finished_at = ?, error = ?, stats = ? WHERE id = ?')
      .run(
        status,
        update.now,
        update.error ?? null,
        update.stats === undefined ? null : JSON.stringify(update.stats),
        id,
      )
  }

  /** Puts a running job back in the queue, dropping the output of the attempt that lapsed. */
  requeueJob(id: string): void {
    this.transaction(() => {
      this.#db.prepare('DELETE FROM job_chunks WHERE job_id = ?').run(id)
      this.#db
        .prepare(
          `UPDATE jobs SET status = 'queued', node_id = NULL, started_at = NULL, last_activity = NULL,
             token_count = 0 WHERE id = ?`,
        )
        .run(id)
    })
  }

  /** Running jobs with no claim or token append since `before`. */
  lapsedJobs(before: number): JobRecord[] {
    return this.#db
      .prepare("SELECT * FROM jobs WHERE status = 'running' AND last_activity < ? ORDER BY created_at")
      .all(before)
      .map(jobFromRow)
  }

  /** Jobs a node is running. */
  runningJobsOf(nodeId: string): JobRecord[] {
    return this.#db
      .prepare("SELECT * FROM jobs WHERE status = 'running' AND node_id = ?")
      .all(nodeId)
      .map(jobFromRow)
  }

  countJobs(): { byStatus: Record<JobStatus, number>; tokens: number } {
    const byStatus: Record<JobStatus, number> = {
      queued: 0,
      running: 0,
      completed: 0,
      failed: 0,
      cancelled: 0,
    }
    let tokens = 0
    for (const row of this.#db
      .prepare('SELECT status, COUNT(*) AS n, SUM(token_count) AS tokens FROM jobs GROUP BY status')
      .all()) {
      byStatus[String(row.status) as JobStatus] = Number(row.n)
      tokens += Number(row.tokens)
    }
    return { byStatus, tokens }
  }

  /** Closes the database and releases the lock. Safe to call twice. */
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

// ---- opening ----

export interface OpenControlPlaneDbOptions {
  /** `control-plane.db`. */
  path: string
  /** `control-plane.lock`: a second control plane on the data dir gets DataDirInUseError. */
  lockPath: string
  dataDir: string
  logger: Logger
  now: () => number
}

/**
 * Takes the lock, then opens the database in WAL mode and proves it usable (header and
 * `PRAGMA integrity_check`). A database that fails is moved aside to
 * `control-plane.db.corrupt-<time>` (with its -wal and -shm files), never deleted, and a fresh one
 * is created. Then the migrations run.
 */
export function openControlPlaneDb(options: OpenControlPlaneDbOptions): ControlPlaneDb {
  const { db, lock, report } = openSqlite({
    path: options.path,
    lockPath: options.lockPath,
    dataDir: options.dataDir,
    migrations: CONTROL_PLANE_MIGRATIONS,
    losesOnRecovery: 'registered devices, pools, rings and jobs (they must register again)',
    upgradeHint: 'upgrade mesh-control-plane',
    logger: options.logger,
    now: options.now,
  })
  return new ControlPlaneDb(db, lock, options.path, report)
}
