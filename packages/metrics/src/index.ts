/**
 * @packageDocumentation
 * Prometheus metrics and a readiness check for a Meshnet node. `meshMetrics` keeps a prom-client
 * registry of its own (never the global one) whose `meshnet_` metrics read rings, shards, trust,
 * drops and fetches from a plain source at each scrape and count jobs as they end; `healthOf`
 * says, from the same figures, whether the node can serve a job now and, in plain words, what is
 * missing. Nothing here depends on the agent.
 */
export type { HealthInput, HealthReport } from './health.ts'
export { healthOf } from './health.ts'
export type { JobObservation, MeshMetrics, MeshMetricsInit, RenderedMetrics } from './metrics.ts'
export { meshMetrics } from './metrics.ts'
export type {
  FetchProgressState,
  FetchState,
  MetricsSource,
  ModelState,
  RingMemberState,
  RingState,
  ShardState,
} from './source.ts'
