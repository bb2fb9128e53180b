import { shortJobId, shortNodeId } from '../format.ts'
import type { FailoverNotice } from '../use-dashboard.ts'

/** Says, for a while, that a job lost members and went on without them. */
export function FailoverBanner({ notice }: { notice: FailoverNotice }) {
  return (
    <div class="banner" role="alert" data-testid="failover-banner">
      failover on job <code>{shortJobId(notice.jobId)}</code>: {notice.dead.map(shortNodeId).join(', ')} lost
      at token {notice.atToken}; the job goes on with the members left
    </div>
  )
}
