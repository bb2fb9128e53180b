import type { DashboardRing, ShardLoad } from '../../../src/contract.ts'
import { shortNodeId } from '../format.ts'
import { MemberTable } from './member-table.tsx'
import { RingSvg } from './ring-svg.tsx'

const LOADS: readonly ShardLoad[] = ['pending', 'fetching', 'loading', 'ready', 'failed']

/** One ring: its state, drawn, and its members' table. */
export function RingPanel({ ring }: { ring: DashboardRing }) {
  return (
    <section class="panel ring-panel" data-testid="ring" data-pool-id={ring.poolId}>
      <header class="panel-head">
        <h2>
          Ring <code title={ring.poolId}>{shortNodeId(ring.poolId)}</code>
        </h2>
        <span class="badge">epoch {ring.epoch}</span>
        <span class={`badge ${ring.converged ? 'good' : 'warn'}`}>
          {ring.converged ? 'converged' : 'converging'}
        </span>
        <span class={`badge ${ring.ready ? 'good' : 'warn'}`}>{ring.ready ? 'ready' : 'not ready'}</span>
      </header>
      {ring.planProblem !== null && (
        <p class="alert" data-testid="plan-problem">
          {ring.planProblem}
        </p>
      )}
      <div class="ring-layout">
        <figure class="ring-figure">
          <RingSvg ring={ring} />
          <figcaption class="legend">
            <span>
              <i class="swatch self" /> this node
            </span>
            {LOADS.map((load) => (
              <span key={load}>
                <i class={`swatch load-${load}`} /> {load}
              </span>
            ))}
          </figcaption>
        </figure>
        <MemberTable members={ring.members} />
      </div>
    </section>
  )
}
