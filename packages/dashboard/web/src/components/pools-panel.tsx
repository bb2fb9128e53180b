import type { DashboardPool } from '../../../src/contract.ts'
import { relativeTime, shortNodeId } from '../format.ts'

/** A certificate that expires sooner than this is shown as a warning. */
const WARN_MS = 3 * 86_400_000

/** The pools this node belongs to; an admin also sees the members and the join requests. */
export function PoolsPanel({ pools, now }: { pools: readonly DashboardPool[]; now: number }) {
  return (
    <section class="panel" data-testid="pools">
      <h2>Pools</h2>
      {pools.length === 0 && <p class="muted">This node is in no pool.</p>}
      {pools.map((pool) => (
        <Pool key={pool.poolId} pool={pool} now={now} />
      ))}
    </section>
  )
}

function Pool({ pool, now }: { pool: DashboardPool; now: number }) {
  const expires = pool.certificateExpiresAt === null ? null : Date.parse(pool.certificateExpiresAt)
  const warn = expires !== null && expires - now < WARN_MS
  return (
    <article class="pool" data-testid="pool" data-pool-id={pool.poolId}>
      <header class="panel-head">
        <code title={pool.poolId}>{shortNodeId(pool.poolId)}</code>
        {/* The role, and whether this node holds the pool's admin powers (a root key, say). */}
        {!(pool.admin && pool.role === 'admin') && <span class="badge">{pool.role}</span>}
        {pool.admin && <span class="badge good">admin</span>}
      </header>
      <p class={warn ? 'warn-text' : 'muted'} title={pool.certificateExpiresAt ?? undefined}>
        {certificateText(pool.certificateExpiresAt, now)}
      </p>
      {pool.members.length > 0 && (
        <ul class="pool-members">
          {pool.members.map((member) => (
            <li key={member.nodeId} class={member.revoked ? 'revoked' : undefined}>
              <code title={member.nodeId}>{shortNodeId(member.nodeId)}</code> {member.role}
              {member.revoked && <span class="badge bad">revoked</span>}
            </li>
          ))}
        </ul>
      )}
      {pool.pendingRequests.length > 0 && (
        <>
          <h3>Join requests</h3>
          <ul class="pool-requests">
            {pool.pendingRequests.map((request) => (
              <li key={request.nodeId}>
                <code title={request.nodeId}>{shortNodeId(request.nodeId)}</code>
                {request.name !== null && ` ${request.name}`}
                {request.requestedAt !== null && (
                  <span class="muted"> asked {relativeTime(request.requestedAt, now)}</span>
                )}
              </li>
            ))}
          </ul>
        </>
      )}
    </article>
  )
}

function certificateText(expiresAt: string | null, now: number): string {
  if (expiresAt === null) return 'certificate expiry unknown'
  const verb = Date.parse(expiresAt) < now ? 'expired' : 'expires'
  return `certificate ${verb} ${relativeTime(expiresAt, now)}`
}
