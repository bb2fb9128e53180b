import type { ComponentChildren } from 'preact'
import type { DashboardJob, DashboardState } from '../../../src/contract.ts'
import { formatBytes, formatMs, formatRate, relativeTime, shortJobId, shortNodeId } from '../format.ts'
import { JobText } from './job-text.tsx'

/** The totals, then the newest jobs first; a running job streams its text. */
export function JobsPanel({
  jobs,
  totals,
  now,
}: {
  jobs: readonly DashboardJob[]
  totals: DashboardState['totals']
  now: number
}) {
  return (
    <section class="panel jobs" data-testid="jobs">
      <h2>Jobs</h2>
      <p class="totals" data-testid="job-totals">
        {totals.jobs} jobs · {totals.completed} completed · {totals.failed} failed · {totals.tokens} tokens ·{' '}
        {totals.failovers} failovers · mean {formatRate(totals.meanTokensPerSecond)} · mean TTFT{' '}
        {formatMs(totals.meanTimeToFirstTokenMs)}
      </p>
      {jobs.length === 0 && <p class="muted">No jobs yet: ask something on the Chat page.</p>}
      {jobs.map((job) => (
        <JobCard key={job.id} job={job} now={now} />
      ))}
    </section>
  )
}

function JobCard({ job, now }: { job: DashboardJob; now: number }) {
  return (
    <article class={`job status-${job.status}`} data-testid="job-row" data-job-id={job.id}>
      <header class="job-head">
        <code title={job.id}>{shortJobId(job.id)}</code>
        <span class={`badge job-${job.status}`}>{job.status}</span>
        <span>{job.mode}</span>
        {job.origin !== null && <span class="muted">from {job.origin}</span>}
        <span class="muted" title={job.createdAt}>
          {relativeTime(job.createdAt, now)}
        </span>
        {job.failovers.map((failover) => (
          <span key={failover.at} class="badge bad" data-testid="job-failover" title={failover.at}>
            failover: {failover.dead.map(shortNodeId).join(', ')} lost at token {failover.atToken}
          </span>
        ))}
      </header>
      <dl class="job-facts">
        <Fact name="members">
          {job.members.map((id) => (
            <code key={id} title={id}>
              {shortNodeId(id)}{' '}
            </code>
          ))}
        </Fact>
        <Fact name="tokens">{job.tokens}</Fact>
        <Fact name="speed">{formatRate(job.tokensPerSecond)}</Fact>
        <Fact name="TTFT">{formatMs(job.timeToFirstTokenMs)}</Fact>
        <Fact name="hop">{formatMs(job.hopLatencyMs)}</Fact>
        {job.allReduceMs !== null && <Fact name="all-reduce">{formatMs(job.allReduceMs)}</Fact>}
        <Fact name="moved">{formatBytes(job.bytesMoved)}</Fact>
        <Fact name="failovers">{job.failovers.length}</Fact>
      </dl>
      {job.error !== null && <p class="error-text">{job.error}</p>}
      {job.status === 'running' || job.status === 'queued' ? (
        <JobText text={job.text} />
      ) : (
        job.text !== '' && (
          <details>
            <summary>output</summary>
            <JobText text={job.text} />
          </details>
        )
      )}
    </article>
  )
}

function Fact({ name, children }: { name: string; children: ComponentChildren }) {
  return (
    <div>
      <dt>{name}</dt>
      <dd>{children}</dd>
    </div>
  )
}
