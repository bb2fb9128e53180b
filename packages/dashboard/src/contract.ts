/**
 * What the dashboard page reads from the agent: `GET /api/dashboard/state` answers a
 * `DashboardState`; `GET /api/dashboard/events` is a server-sent-event stream of `state` events
 * (a whole `DashboardState`, on connect and then whenever it changed, at most once a second) and
 * `job` events (a `DashboardJobEvent` as it happens: a job starts, gets members, makes a token,
 * fails over, ends). Both take `Authorization: Bearer <token>`. Plain JSON, no functions, no Dates.
 */

/** A member's link from this node: itself, a direct connection (on a LAN address or not), a relay. */
export type LinkType = 'self' | 'lan' | 'direct' | 'relayed' | 'none'

/** How far a member's shard is: as the ring's members announce it. */
export type ShardLoad = 'pending' | 'fetching' | 'loading' | 'ready' | 'failed'

export interface DashboardMember {
  nodeId: string
  /** Position on the ring (0-based, the ring's order). */
  position: number
  /** True for the node serving this page. */
  self: boolean
  /** Memory the member offers for shards (bytes). */
  offeredBytes: number
  /** Weight bytes its shard holds in memory now (0 until loaded). */
  usedBytes: number
  /** The member's part of the current plan, or null when it has none. */
  shard: {
    /** Layers [first, end) it runs. */
    layers: [number, number]
    load: ShardLoad
    /** Bytes of the shard and how many are loaded (or fetched while `fetching`). */
    bytes: number | null
    loadedBytes: number | null
    error: string | null
  } | null
  /** This node's trust score of the member, 0..1 (1 for itself). */
  trust: number
  link: {
    type: LinkType
    /** Round trip measured by libp2p ping (ms), null before the first or when it failed. */
    rttMs: number | null
    /** The remote address of the connection, when there is one. */
    address: string | null
  }
}

export interface DashboardRing {
  poolId: string
  epoch: number
  converged: boolean
  /** Converged, planned, and every planned member reports its shard loaded. */
  ready: boolean
  /** Why no plan fits, when none does. */
  planProblem: string | null
  /** Number of layers of the model the ring serves (for drawing shard ranges), null without one. */
  layers: number | null
  members: DashboardMember[]
}

export interface DashboardPool {
  poolId: string
  /** This node's role in the pool. */
  role: string
  /** True when this node administers the pool (it then sees join requests). */
  admin: boolean
  /** When this node's certificate of the pool expires (ISO 8601), null when unknown. */
  certificateExpiresAt: string | null
  /** Members as the pool admin knows them (admins only; others see an empty list). */
  members: Array<{ nodeId: string; role: string; expiresAt: string | null; revoked: boolean }>
  /** Join requests waiting for an admin's answer (admins only). */
  pendingRequests: Array<{ nodeId: string; name: string | null; requestedAt: string | null }>
}

export interface DashboardJob {
  id: string
  poolId: string | null
  /** Who asked: `cli`, `p2p`, `api`, `control-plane`; null for jobs from before this agent started. */
  origin: string | null
  mode: string
  status: 'queued' | 'running' | 'completed' | 'failed' | 'cancelled'
  /** ISO 8601. */
  createdAt: string
  /** The members running it (after failovers: the ones it finished on). */
  members: string[]
  /** Generated tokens so far. */
  tokens: number
  /** Text generated so far (the last 4 KiB of it), live while running. Empty for old jobs. */
  text: string
  tokensPerSecond: number
  timeToFirstTokenMs: number | null
  hopLatencyMs: number | null
  allReduceMs: number | null
  bytesMoved: number
  failovers: Array<{ dead: string[]; atToken: number; at: string }>
  error: string | null
}

/** How this node is reached, as `mesh doctor` reports it (without its pings). */
export interface DashboardNetwork {
  /** `public`, `endpoint-independent`, `address-and-port-dependent` (symmetric) or `unknown`. */
  natType: string
  /** How the NAT type was learned, or why it is not known yet. */
  natEvidence: string
  /** A public, non-relayed address of this node has been confirmed. */
  publiclyReachable: boolean
  /** Relays this node was given, and those it holds a reservation on (node ids). */
  relays: string[]
  reservedRelays: string[]
  /** What UPnP found and mapped, in a few words; null when UPnP is off. */
  upnp: string | null
  /** Next steps in plain language, warnings first; empty when nothing looks wrong. */
  advice: Array<{ severity: 'warning' | 'info'; message: string }>
}

export interface DashboardState {
  /** When this snapshot was taken (ISO 8601). */
  at: string
  node: {
    nodeId: string
    name: string | null
    version: string
    startedAt: string
    /** Where the OpenAI-compatible API (and this page) listens. */
    api: { host: string; port: number } | null
  }
  /** The model this node serves, with how much of it is here when it is fetched from peers. */
  model: {
    id: string
    name: string
    layers: number | null
    bytes: number | null
    fetch: { doneBytes: number; totalBytes: number; sources: number } | null
  } | null
  /** Reachability and advice; null while the libp2p node is not running. */
  network: DashboardNetwork | null
  rings: DashboardRing[]
  pools: DashboardPool[]
  /** The newest jobs first (at most 50). */
  jobs: DashboardJob[]
  totals: {
    jobs: number
    completed: number
    failed: number
    tokens: number
    failovers: number
    meanTokensPerSecond: number
    meanTimeToFirstTokenMs: number
  }
}

/** One thing a job did, as it happened (`event: job` on the events stream). */
export type DashboardJobEvent =
  | { type: 'start'; job: DashboardJob }
  | {
      type: 'members'
      jobId: string
      members: string[]
      failover: { dead: string[]; atToken: number; at: string } | null
    }
  | { type: 'token'; jobId: string; index: number; text: string; tokensPerSecond: number }
  | { type: 'end'; job: DashboardJob }
