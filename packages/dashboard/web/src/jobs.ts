import type { DashboardJob, DashboardJobEvent } from '../../src/contract.ts'

/** A running job keeps this much of its text (the agent sends the last 4 KiB of it too). */
export const MAX_JOB_TEXT = 4096
/** The agent lists at most this many jobs. */
const MAX_JOBS = 50

/** The job list after one job event; the list is newest first, events for unknown jobs wait for the next state. */
export function applyJobEvent(jobs: readonly DashboardJob[], event: DashboardJobEvent): DashboardJob[] {
  switch (event.type) {
    case 'start':
      return [event.job, ...jobs.filter((job) => job.id !== event.job.id)].slice(0, MAX_JOBS)
    case 'end':
      return jobs.some((job) => job.id === event.job.id)
        ? jobs.map((job) => (job.id === event.job.id ? event.job : job))
        : [event.job, ...jobs].slice(0, MAX_JOBS)
    case 'members':
      return update(jobs, event.jobId, (job) => ({
        ...job,
        members: event.members,
        failovers:
          event.failover === null || job.failovers.some((f) => f.at === event.failover?.at)
            ? job.failovers
            : [...job.failovers, event.failover],
      }))
    case 'token':
      return update(jobs, event.jobId, (job) => ({
        ...job,
        text: (job.text + event.text).slice(-MAX_JOB_TEXT),
        tokens: Math.max(job.tokens, event.index + 1),
        tokensPerSecond: event.tokensPerSecond,
      }))
  }
}

function update(
  jobs: readonly DashboardJob[],
  id: string,
  change: (job: DashboardJob) => DashboardJob,
): DashboardJob[] {
  return jobs.map((job) => (job.id === id ? change(job) : job))
}
