import type { DashboardState } from '../../../src/contract.ts'
import { JobsPanel } from './jobs-panel.tsx'
import { ModelPanel } from './model-panel.tsx'
import { NetworkPanel } from './network-panel.tsx'
import { PoolsPanel } from './pools-panel.tsx'
import { RingPanel } from './ring-panel.tsx'

/** The dashboard: the rings, the model, the pools, the network and the jobs of the node serving the page. */
export function DashboardView({ state }: { state: DashboardState | null }) {
  if (state === null) return <p class="panel muted">Waiting for the agent…</p>
  const now = Date.now()
  return (
    <div class="dashboard">
      {state.rings.length === 0 && <p class="panel muted">This node is in no ring yet.</p>}
      {state.rings.map((ring) => (
        <RingPanel key={ring.poolId} ring={ring} />
      ))}
      <div class="columns">
        <ModelPanel model={state.model} />
        <PoolsPanel pools={state.pools} now={now} />
        <NetworkPanel network={state.network} />
      </div>
      <JobsPanel jobs={state.jobs} totals={state.totals} now={now} />
    </div>
  )
}
