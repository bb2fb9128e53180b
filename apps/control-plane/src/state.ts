import type { Logger } from '@meshnet/core'
import type { ChunkRecord, ControlPlaneDb, JobRecord } from './db.ts'
import { refreshRings } from './rings.ts'

/** What a job's stream listeners hear. */
export type JobEvent =
  | { type: 'token'; chunk: ChunkRecord }
  | { type: 'requeued'; job: JobRecord }
  | { type: 'finished'; job: JobRecord }

/** In-process fan-out of job events to the SSE streams that follow a job. */
export class JobEvents {
  readonly #listeners = new Map<string, Set<(event: JobEvent) => void>>()

  subscribe(jobId: string, listener: (event: JobEvent) => void): () => void {
    let set = this.#listeners.get(jobId)
    if (set === undefined) {
      set = new Set()
      this.#listeners.set(jobId, set)
    }
    set.add(listener)
    return () => {
      set.delete(listener)
      if (set.size === 0) this.#listeners.delete(jobId)
    }
  }

  emit(jobId: string, event: JobEvent): void {
    for (const listener of [...(this.#listeners.get(jobId) ?? [])]) listener(event)
  }
}

/** Everything a route needs. */
export interface ControlPlaneContext {
  readonly db: ControlPlaneDb
  readonly events: JobEvents
  readonly logger: Logger
  readonly now: () => number
  readonly startedAt: number
  readonly version: string
  /** A device is online when its last heartbeat is at most this old; ring members older are dropped. */
  readonly onlineWindowMs: number
  /** A running job with no token append for this long goes back to the queue. */
  readonly jobLeaseMs: number
  /** Claims a job gets before a lapsed lease fails it instead of requeueing it. */
  readonly maxJobAttempts: number
}

/**
 * Brings time-based state up to date: lapsed job leases go back to the queue (or fail after
 * `maxJobAttempts`), and stale or expired ring members are dropped. Runs before every request and
 * on a timer, so the answer never depends on when the timer last fired.
 */
export function maintain(ctx: ControlPlaneContext): void {
  const now = ctx.now()
  for (const job of ctx.db.lapsedJobs(now - ctx.jobLeaseMs)) {
    if (job.attempts >= ctx.maxJobAttempts) {
      const error = `lease expired ${job.attempts} times (last on ${job.nodeId}): no token for ${ctx.jobLeaseMs} ms`
      ctx.db.finishJob(job.id, 'failed', { now, error })
      ctx.logger.warn({ jobId: job.id, nodeId: job.nodeId }, `job failed: ${error}`)
      ctx.events.emit(job.id, { type: 'finished', job: ctx.db.getJob(job.id)! })
    } else {
      ctx.db.requeueJob(job.id)
      ctx.logger.info({ jobId: job.id, nodeId: job.nodeId }, 'job lease expired; back in the queue')
      ctx.events.emit(job.id, { type: 'requeued', job: ctx.db.getJob(job.id)! })
    }
  }
  refreshRings(ctx)
}
