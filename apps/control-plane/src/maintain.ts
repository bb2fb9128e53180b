import { refreshRings } from './rings.ts'
import type { ControlPlaneContext } from './state.ts'

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
