/**
 * What the metrics read at scrape time: plain functions returning numbers and records, so that this
 * package knows nothing of the agent. Every function is optional; one that is absent or throws
 * leaves its metrics out of that scrape.
 */
export interface MetricsSource {
  /** The rings this node is in, as `mesh ring-status` shows them. */
  rings?(): readonly RingState[]
  /** Trust score (0..1) of each peer this node deals with, by node id. */
  trust?(): Readonly<Record<string, number>>
  /** LAN beacons dropped since start, by reason. */
  beaconDrops?(): Readonly<Record<string, number>>
  /** Messages, requests and streams refused since start: protocol → reason → count. */
  protocolDrops?(): Readonly<Record<string, Readonly<Record<string, number>>>>
  /** Model chunks fetched from peers and URLs, and the fetch under way. */
  fetch?(): FetchState
  /** The model this node serves; undefined when it serves none. */
  model?(): ModelState | undefined
  /** Jobs running on this node now. */
  jobsRunning?(): number
  /** Open libp2p connections. */
  connections?(): number
}

/** A pool's ring as this node sees it. */
export interface RingState {
  poolId: string
  epoch: number
  digest?: string
  converged: boolean
  /** Converged, planned, and every planned member reports its shard loaded. */
  ready: boolean
  /** Why the ring has no plan for the served model, when it has none. */
  planProblem?: string
  members: readonly RingMemberState[]
}

export interface RingMemberState {
  nodeId: string
  /** The view this member last reported: the ring is converged when every member reports ours. */
  reports?: { epoch: number; digest?: string }
  /** Its shard in the ring's plan, with the load state it announces; null: no shard planned. */
  shard: ShardState | null
}

export interface ShardState {
  layers: readonly [number, number]
  /** `pending`: the member has not announced a load of these layers yet. */
  load: 'pending' | 'fetching' | 'loading' | 'ready' | 'failed'
  /** Weight bytes of the shard (estimated until loaded). */
  bytes?: number
  loadedBytes?: number
  error?: string
}

export interface FetchState {
  /** Chunk bytes fetched since start. */
  fetchedBytes: number
  fetches?: number
  failedFetches?: number
  /** The fetch under way, if any. */
  current?: FetchProgressState
}

export interface FetchProgressState {
  /** Model id. */
  model: string
  doneBytes: number
  totalBytes: number
}

/** The served model. */
export interface ModelState {
  /** Model id (64 hex digits) once known, else what `--model` named. */
  id: string
  name: string
  /** False while its manifest is on its way from pool peers. */
  known: boolean
  /** Every chunk of the file is on disk (a member holding only its shard is not whole). */
  whole: boolean
}
