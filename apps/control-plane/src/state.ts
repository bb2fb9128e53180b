import type { Logger } from '@meshnet/core'
import type { ControlPlaneDb } from './db.ts'
import type { ChunkRecord, JobRecord } from './db-schema.ts'

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
