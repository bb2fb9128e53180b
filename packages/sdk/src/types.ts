import type { Diagnosis, MeshNode, PerfResult } from '@meshnet/discovery'
import type { NodeIdentity } from '@meshnet/identity'
import type { PoolGate } from '@meshnet/pool'
import type { JobMessage, JobRequest, JobResult, JobToken, JobTool } from '@meshnet/protocols'
import type { P2PDebugEvent } from './debug-log.ts'
import type { DataLimitExceededError } from './errors.ts'
import type { SDKPool } from './pool.ts'
import type { ByteCounts, TrafficMetrics } from './traffic.ts'
/** A node that can run jobs for this SDK. */
export interface DiscoveredNode {
  nodeId: string
  /** Dialable addresses, each ending in `/p2p/<node id>` (may be empty when only the id is known). */
  addresses: string[]
  /** `dht`: a provider record of the model (public nodes); `pool`: a member of the SDK's pool ring. */
  sources: Array<'dht' | 'pool'>
  /** Found through a model provider record: accepts jobs without a pool (`mesh start --public`). */
  public: boolean
  /** Pools this node serves jobs for, as far as the SDK knows. */
  pools: string[]
  /** The model its pool ring serves (pool nodes only). */
  model?: { name: string; sha256: string }
  connected: boolean
}

export interface DiscoverNodesOptions {
  /** File name or SHA-256 of the model; public nodes are found by it. Optional for pool members. */
  model?: string
  /** Pool whose ring to ask (default: the SDK's pool, if any). */
  poolId?: string
  /** Ignore results cached within `discoveryOptions.interval`. */
  forceRefresh?: boolean
  signal?: AbortSignal
}

/** A generation to run: the job request of `/meshnet/job/1.0.0` plus where to run it. */
export interface InferenceRequest extends Omit<JobRequest, 'poolId' | 'messages' | 'tools' | 'toolChoice'> {
  /** The text the model continues, as is (see `streamChat` for chat messages). */
  prompt: string
  /** Most tokens to generate (1 to 32768). */
  maxTokens: number
  /** Run on the SDK's pool (default when it has one) or on public nodes. */
  target?: 'pool' | 'public'
  /** The pool, when not the SDK's own. */
  poolId?: string
  /** Run on this node (a node id); otherwise the SDK picks from discovery. */
  nodeId?: string
  /** Cancels the job: the stream is closed and the node stops generating. */
  signal?: AbortSignal
}

/** One message of a chat: `role` is `system`, `user`, `assistant` or `tool`; `name` is passed to the template. */
export type ChatMessage = JobMessage

/**
 * A chat to answer: the node that runs it renders `messages` into the prompt with the model's chat
 * template (as its OpenAI API does), then generates the assistant's reply.
 */
export interface ChatRequest extends Omit<InferenceRequest, 'prompt' | 'maxTokens' | 'parseSpecial'> {
  /** 1 to 1024 messages, their contents at most 256 Ki characters together. */
  messages: readonly ChatMessage[]
  /** Most tokens of the reply (1 to 32768); default: the rest of the model's context, as OpenAI's chat. */
  maxTokens?: number
  /**
   * Functions the model may call: rendered with the model's template; the calls it makes come back
   * parsed in the result's `toolCalls` (its `content` is the rest of the reply). Send each call's
   * answer back as a `tool` message with its `toolCallId`, after an `assistant` message with the
   * `toolCalls`.
   */
  tools?: JobTool[]
  /** `auto` (default), `none`, `required` (one call, its arguments valid for its schema), or `{ name }`. */
  toolChoice?: JobRequest['toolChoice']
  /**
   * Structured output: `{ type: 'json' }` for any JSON object, with `schema` for JSON valid for that
   * JSON Schema (see @meshnet/grammar for the keywords). The sampler keeps to it, so the reply parses.
   */
  responseFormat?: { type: 'text' } | { type: 'json'; schema?: Record<string, unknown> }
}

/** Tokens as they come, and the finished job. */
export interface InferenceStream extends AsyncIterable<JobToken> {
  readonly requestId: string
  /** The finished job; rejects with the job's error (also thrown by the iterator). */
  readonly result: Promise<JobResult>
}

export interface PeerEvent {
  peerId: string
  /** The remote address of the connection, for `peer:connect`. */
  address?: string
}

export interface NodesDiscoveredEvent {
  model: string | undefined
  nodes: DiscoveredNode[]
}

export interface StreamTokenEvent {
  requestId: string
  nodeId: string
  token: JobToken
}

export interface StreamEndEvent {
  requestId: string
  result?: JobResult
  error?: Error
  cancelled: boolean
}

export interface FabstirSDKEvents {
  'p2p:debug': [P2PDebugEvent]
  'peer:connect': [PeerEvent]
  'peer:disconnect': [PeerEvent]
  'nodes:discovered': [NodesDiscoveredEvent]
  'stream:token': [StreamTokenEvent]
  'stream:end': [StreamEndEvent]
}

export interface BootstrapResult {
  address: string
  nodeId: string
  reachable: boolean
  /** Rounds tried (1 + retries). */
  attempts: number
  error?: string
}

export interface ConnectResult {
  nodeId: string
  addresses: string[]
  bootstrap: BootstrapResult[]
  pool: SDKPool | undefined
}

export interface ConnectionInfo {
  peerId: string
  remoteAddr: string
  direction: 'inbound' | 'outbound'
  status: string
  streams: number
  multiplexer: string | undefined
  encryption: string | undefined
  /** Relayed connections carry relay limits. */
  limited: boolean
  openedAt: number
  /** Bytes on the wire (encryption and multiplexing included), when metrics are on. */
  bytes: ByteCounts | undefined
}

export interface P2PMetrics {
  timestamp: number
  uptimeMs: number
  connections: { total: number; inbound: number; outbound: number; limited: number; list: ConnectionInfo[] }
  peers: { connected: number; known: number }
  /** Bytes on the wire since connect(); undefined when p2pConfig.metrics.enabled is false. */
  bytes: (ByteCounts & { perSecond: ByteCounts }) | undefined
  protocols: {
    /** Protocols this node serves. */
    handled: string[]
    /** Open streams by protocol. */
    openStreams: Record<string, number>
    /** Application bytes by protocol since connect() (metrics on). */
    traffic: Record<string, ByteCounts>
  }
  dht: { enabled: boolean; mode: 'client' | 'server' | undefined; routingTableSize: number }
  nat: { publiclyReachable: boolean; reservedRelays: string[] }
  /** Every other figure libp2p reports through its metrics interface (metrics on). */
  libp2p: Record<string, unknown>
}

export type HealthStatus = 'healthy' | 'degraded' | 'unhealthy' | 'disconnected'

export interface SystemHealthReport {
  status: HealthStatus
  timestamp: number
  mode: 'production' | 'development'
  /** What is wrong, in words; empty when healthy. */
  issues: string[]
  p2p: {
    connected: boolean
    nodeId: string | undefined
    uptimeMs: number
    connections: number
    peers: number
    bootstrap: { configured: number; connected: number }
    dht: { enabled: boolean; routingTableSize: number }
    nat: NatType
    dataLimit: string | undefined
  }
  pool: (SDKPool & { membersConnected: number }) | undefined
  jobs: { running: number }
}

/** How reachable this SDK's node is: from AutoNAT and relay reservations (`node.connectivity()`). */
export type NatType = 'public' | 'relayed' | 'private' | 'local-only' | 'unknown'

export interface ConnectivityTestResult {
  /** At least one bootstrap node answered a dial and a ping (true when none is configured). */
  bootstrap: boolean
  bootstrapNodes: Array<{ address: string; reachable: boolean; latencyMs?: number; error?: string }>
  /** Peers can be found: a DHT lookup returned peers, or mDNS / custom discovery found some. */
  discovery: boolean
  discoveryDetails: {
    dht: { enabled: boolean; routingTableSize: number; closestPeers: number; error?: string }
    mdns: { enabled: boolean }
    discoveredPeers: number
    knownPeers: number
  }
  natType: NatType
  nat: { publiclyReachable: boolean; reservedRelays: string[]; addresses: string[] }
  /**
   * What `mesh doctor` reports for the SDK's own node: addresses, NAT type and how it was learned,
   * UPnP, relay reservations, each connected peer's link and round trip, and advice.
   */
  diagnosis: Diagnosis
}

export interface PeerPerformance {
  nodeId: string
  /** Round trips of libp2p ping; `failures` counts pings that failed even after one retry. */
  latency: { samples: number; failures: number; minMs: number; avgMs: number; maxMs: number } | undefined
  bandwidth: PerfResult | undefined
  /** Why a figure is missing (peer does not run /perf/1.0.0, ping failed, ...). */
  errors: string[]
}

export interface NetworkPerformanceResult {
  /** Mean ping round trip over every peer, ms (undefined when no ping succeeded). */
  avgLatency: number | undefined
  /** Mean perf throughput over the peers that serve /perf/1.0.0, bits per second. */
  bandwidth: { uploadBitsPerSecond: number; downloadBitsPerSecond: number } | undefined
  peers: PeerPerformance[]
}

export interface NetworkPerformanceOptions {
  /** Node ids to measure (default: every connected peer, at most 8). */
  peers?: string[]
  /** Pings per peer. Default 5. */
  pings?: number
  /** Bytes each way per perf run. Default 1 MiB; 0 skips bandwidth. */
  bytes?: number
  signal?: AbortSignal
}

/** What a connected SDK holds (internal). */
export interface Session {
  node: MeshNode
  identity: NodeIdentity
  gate: PoolGate | undefined
  pool: SDKPool | undefined
  traffic: TrafficMetrics | undefined
  startedAt: number
  timers: NodeJS.Timeout[]
  lifetime: AbortController
  /** Verdicts of security.authenticate by peer. */
  verdicts: Map<string, Promise<boolean>>
  /** Connections whose certificates were exchanged. */
  exchanged: Map<string, Promise<string[]>>
  jobs: Set<AbortController>
  discovered: Map<string, { at: number; nodes: DiscoveredNode[] }>
  bootstrap: BootstrapResult[]
  limit: DataLimitExceededError | undefined
  /** An auto-dial round is running (rounds start from the timer and from discovery events). */
  autoDialing: boolean
  rates: { at: number; totals: ByteCounts; perSecond: ByteCounts }
}

export const NO_MODEL = '\u0000pool'

/** Pause before the second try of a ping that failed without timing out. */
export const PING_RETRY_MS = 100
