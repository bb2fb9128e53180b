import type { JobEvent } from '@meshnet/protocols'
import type { DashboardJob, DashboardJobEvent } from './contract.ts'

/** Jobs the dashboard lists, newest first. */
export const DASHBOARD_JOBS = 50
/** Live text kept per job (its end). */
const TEXT_BYTES = 4096

/** A job as the agent's store keeps it (`JobRecord` of @meshnet/shards). */
export interface StoredJob {
  id: string
  poolId: string | null
  mode: string
  status: DashboardJob['status']
  createdAt: number
  error: string | null
  stats: Record<string, unknown>
}

interface Live {
  job: DashboardJob
  firstTokenAt: number | undefined
  lastTokenAt: number | undefined
  startedAt: number
}

/**
 * Follows the jobs a runner runs, from its events, for the dashboard: each job's members (and who
 * was lost in a failover), its text so far and its speed while it runs, its figures once done.
 * Keeps the newest `DASHBOARD_JOBS`; older ones come from the store.
 */
export class JobTracker {
  readonly #live = new Map<string, Live>()

  /** Takes one runner event; returns what the page should hear of it. */
  apply(event: JobEvent): DashboardJobEvent | undefined {
    if (event.type === 'start') {
      const job = blankJob({
        id: event.jobId,
        poolId: event.poolId,
        origin: event.origin,
        mode: event.mode,
        status: 'running',
        createdAt: new Date(event.at).toISOString(),
        error: null,
      })
      this.#live.set(event.jobId, {
        job,
        firstTokenAt: undefined,
        lastTokenAt: undefined,
        startedAt: event.at,
      })
      while (this.#live.size > DASHBOARD_JOBS) this.#live.delete(this.#live.keys().next().value!)
      return { type: 'start', job: { ...job } }
    }
    const live = this.#live.get(event.jobId)
    if (live === undefined) return undefined
    const { job } = live
    switch (event.type) {
      case 'members': {
        job.members = [...event.members]
        if (event.failover === undefined)
          return { type: 'members', jobId: job.id, members: job.members, failover: null }
        const failover = {
          dead: [...event.failover.dead],
          atToken: job.tokens,
          at: new Date(event.at).toISOString(),
        }
        job.failovers.push(failover)
        return { type: 'members', jobId: job.id, members: job.members, failover }
      }
      case 'token': {
        job.text = tail(job.text + event.text)
        job.tokens = Math.max(job.tokens, event.index + 1)
        live.firstTokenAt ??= event.at
        live.lastTokenAt = event.at
        job.timeToFirstTokenMs ??= live.firstTokenAt - live.startedAt
        const seconds = (live.lastTokenAt - live.firstTokenAt) / 1000
        job.tokensPerSecond = seconds > 0 ? (job.tokens - 1) / seconds : 0
        return {
          type: 'token',
          jobId: job.id,
          index: event.index,
          text: event.text,
          tokensPerSecond: job.tokensPerSecond,
        }
      }
      case 'end': {
        job.status = event.status
        job.error = event.error ?? null
        if (event.result !== undefined)
          Object.assign(job, figures(event.result.mode, { ...event.result.stats }))
        return { type: 'end', job: { ...job, failovers: [...job.failovers] } }
      }
    }
  }

  /** The newest jobs: the ones followed live, then `stored` ones (newest first) not among them. */
  jobs(stored: readonly StoredJob[]): DashboardJob[] {
    const live = [...this.#live.values()]
      .map((l) => ({ ...l.job, failovers: [...l.job.failovers] }))
      .reverse()
    const seen = new Set(live.map((j) => j.id))
    const old = stored.filter((j) => !seen.has(j.id)).map(fromStore)
    return [...live, ...old].slice(0, DASHBOARD_JOBS)
  }
}

/** A stored job, as the dashboard lists it (no live text, no failover detail). */
function fromStore(job: StoredJob): DashboardJob {
  return {
    ...blankJob({
      id: job.id,
      poolId: job.poolId,
      origin: typeof job.stats.origin === 'string' ? job.stats.origin : null,
      mode: job.mode,
      status: job.status,
      createdAt: new Date(job.createdAt).toISOString(),
      error: job.error,
    }),
    ...figures(job.mode, job.stats),
  }
}

/** A job with who, what and when, and no figures yet. */
function blankJob(
  known: Pick<DashboardJob, 'id' | 'poolId' | 'origin' | 'mode' | 'status' | 'createdAt' | 'error'>,
): DashboardJob {
  return {
    ...known,
    members: [],
    tokens: 0,
    text: '',
    tokensPerSecond: 0,
    timeToFirstTokenMs: null,
    hopLatencyMs: null,
    allReduceMs: null,
    bytesMoved: 0,
    failovers: [],
  }
}

/** The figures of a finished job's stats (a `JobResult`'s, or a stored job's). */
function figures(mode: string, stats: Record<string, unknown>): Partial<DashboardJob> {
  const num = (key: string) => {
    const value = stats[key]
    return typeof value === 'number' && Number.isFinite(value) ? value : undefined
  }
  const members = stats.members
  return {
    mode: typeof stats.mode === 'string' ? stats.mode : mode,
    ...(Array.isArray(members) ? { members: members.filter((m): m is string => typeof m === 'string') } : {}),
    ...(num('completionTokens') === undefined ? {} : { tokens: num('completionTokens')! }),
    ...(num('tokensPerSecond') === undefined ? {} : { tokensPerSecond: num('tokensPerSecond')! }),
    ...(num('timeToFirstTokenMs') === undefined ? {} : { timeToFirstTokenMs: num('timeToFirstTokenMs')! }),
    ...(num('hopLatencyMs') === undefined ? {} : { hopLatencyMs: num('hopLatencyMs')! }),
    ...(num('allReduceMs') === undefined ? {} : { allReduceMs: num('allReduceMs')! }),
    ...(num('bytesMoved') === undefined ? {} : { bytesMoved: num('bytesMoved')! }),
  }
}

/** The last TEXT_BYTES characters or so of a job's text. */
function tail(text: string): string {
  return text.length > TEXT_BYTES ? text.slice(text.length - TEXT_BYTES) : text
}
