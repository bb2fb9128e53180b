import { randomUUID } from 'node:crypto'
import { EventEmitter } from 'node:events'
import { setTimeout as sleep } from 'node:timers/promises'
import { type Connection, type PeerId, peerDiscoverySymbol } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import { createMeshNode, type MeshNode, PERF_PROTOCOL, type Perf, type PerfResult } from '@meshnet/discovery'
import { dataDirLayout, generateIdentity, loadOrCreateIdentity, type NodeIdentity } from '@meshnet/identity'
import {
  type JobRequest,
  type JobResult,
  type JobToken,
  modelProviderKey,
  requestJob,
} from '@meshnet/protocols'
import { PoolGate } from '@meshnet/ring'
import { type Multiaddr, multiaddr } from '@multiformats/multiaddr'
import { type DebugLevel, type FabstirSDKConfig, parseSDKConfig, type ResolvedSDKConfig } from './config.ts'
import { debugComponentLogger, levelEnabled, type P2PDebugEvent } from './debug-log.ts'
import {
  BootstrapUnreachableError,
  DataLimitExceededError,
  NoNodesFoundError,
  NotConnectedError,
  PeerRefusedError,
  RequestTimeoutError,
  SDKConfigError,
} from './errors.ts'
import { checkMeshNodeOptions, discoveryServiceName, meshNodeOptionsOf } from './node-options.ts'
import { loadSDKPool, poolRendezvousKey, requestRingStatus, type SDKPool } from './pool.ts'
import { TokenQueue } from './token-queue.ts'
import { type ByteCounts, TrafficMetrics } from './traffic.ts'

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
export interface InferenceRequest extends Omit<JobRequest, 'poolId'> {
  /** Run on the SDK's pool (default when it has one) or on public nodes. */
  target?: 'pool' | 'public'
  /** The pool, when not the SDK's own. */
  poolId?: string
  /** Run on this node (a node id); otherwise the SDK picks from discovery. */
  nodeId?: string
  /** Cancels the job: the stream is closed and the node stops generating. */
  signal?: AbortSignal
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

interface Session {
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

const NO_MODEL = '\u0000pool'

/** Pause before the second try of a ping that failed without timing out. */
const PING_RETRY_MS = 100

/**
 * The Meshnet client for apps: a libp2p node of its own that finds nodes serving a model (DHT
 * provider records of public nodes, ring status from pool members) and streams completions from
 * them over `/meshnet/job/1.0.0`. With a data dir holding a pool certificate it exchanges
 * certificates on connect and runs jobs on that pool's ring. Construction validates the
 * configuration and does no I/O; `connect()` starts the node, `disconnect()` stops everything.
 */
export class FabstirSDK extends EventEmitter<FabstirSDKEvents> {
  readonly config: ResolvedSDKConfig
  #session: Session | undefined
  #connecting: Promise<ConnectResult> | undefined
  /** Most detailed `p2p:debug` level emitted (p2pConfig.debug.logLevel, trace when verbose). */
  readonly #level: DebugLevel

  constructor(config: FabstirSDKConfig) {
    super()
    this.config = parseSDKConfig(config)
    checkMeshNodeOptions(this.config)
    const { debug } = this.config.p2pConfig
    this.#level = debug.verbose ? 'trace' : (debug.logLevel ?? 'debug')
  }

  get connected(): boolean {
    return this.#session !== undefined
  }

  /** This SDK's node id, once connected. */
  get nodeId(): string | undefined {
    return this.#session?.identity.nodeId
  }

  /** The SDK's libp2p node, for what the SDK does not wrap (undefined until connected). */
  get node(): MeshNode | undefined {
    return this.#session?.node
  }

  /**
   * Starts the node and dials the bootstrap nodes, `maxRetries` more rounds `retryDelay` apart.
   * Throws BootstrapUnreachableError when bootstrap nodes are configured and none answered.
   */
  async connect(): Promise<ConnectResult> {
    if (this.#session !== undefined) return this.#connectResult(this.#session)
    this.#connecting ??= this.#connect().finally(() => {
      this.#connecting = undefined
    })
    return this.#connecting
  }

  async #connect(): Promise<ConnectResult> {
    const { config } = this
    const p2p = config.p2pConfig
    const identity =
      config.identity ??
      (config.dataDir === undefined
        ? generateIdentity()
        : (await loadOrCreateIdentity(dataDirLayout(config.dataDir).identityKey)).identity)
    const pool =
      config.dataDir === undefined ? undefined : await loadSDKPool(config.dataDir, config.poolId, identity)

    let session: Session | undefined
    const traffic = p2p.metrics.enabled
      ? new TrafficMetrics({
          limits: p2p.connectionManager,
          onLimit: (limit, totals) => {
            if (session !== undefined) this.#dataLimitReached(session, limit, totals)
          },
        })
      : undefined
    const componentLogger = p2p.debug.enabled
      ? debugComponentLogger({
          subsystems: p2p.debug.subsystems,
          level: this.#level,
          emit: (event) => this.#emit('p2p:debug', event),
        })
      : undefined
    const node = await createMeshNode(
      meshNodeOptionsOf(config, identity, {
        ...(traffic ? { metrics: () => traffic } : {}),
        ...(componentLogger ? { componentLogger } : {}),
      }),
    )
    const now = Date.now()
    session = {
      node,
      identity,
      gate: undefined,
      pool,
      traffic,
      startedAt: now,
      timers: [],
      lifetime: new AbortController(),
      verdicts: new Map(),
      exchanged: new Map(),
      jobs: new Set(),
      discovered: new Map(),
      bootstrap: [],
      limit: undefined,
      autoDialing: false,
      rates: { at: now, totals: { sent: 0, received: 0 }, perSecond: { sent: 0, received: 0 } },
    }
    try {
      p2p.peerDiscovery.forEach((_factory, index) => {
        const service = (node.libp2p.services as Record<string, unknown>)[discoveryServiceName(index)]
        if (
          (service as { [peerDiscoverySymbol]?: unknown } | undefined)?.[peerDiscoverySymbol] === undefined
        ) {
          throw new SDKConfigError(
            `p2pConfig.peerDiscovery[${index}]`,
            'built a service without a peer discovery interface (peerDiscoverySymbol); pass a libp2p peer-discovery factory',
          )
        }
      })
      for (const protocol of p2p.protocols) {
        await node.libp2p.handle(protocol.id, protocol.handler, {
          maxInboundStreams: protocol.maxInboundStreams,
          runOnLimitedConnection: protocol.runOnLimitedConnection,
        })
      }
      this.#listen(session)
      if (pool !== undefined && config.dataDir !== undefined) {
        session.gate = new PoolGate({
          node,
          dataDir: config.dataDir,
          ...(config.logger ? { logger: config.logger } : {}),
        })
        await session.gate.start()
      }
      session.bootstrap = await this.#dialBootstrap(session)
      if (session.bootstrap.length > 0 && !session.bootstrap.some((b) => b.reachable)) {
        throw new BootstrapUnreachableError(
          `none of the ${session.bootstrap.length} bootstrap nodes answered within ${p2p.dialTimeout} ms ` +
            `after ${p2p.maxRetries + 1} rounds: ${session.bootstrap.map((b) => `${b.address} (${b.error})`).join('; ')}`,
          { details: { attempts: session.bootstrap } },
        )
      }
    } catch (err) {
      await this.#stop(session)
      throw err
    }
    this.#session = session
    this.#startTimers(session)
    this.#debug(
      'sdk',
      'info',
      `connected as ${identity.nodeId}${pool ? ` (pool ${pool.poolId}, ${pool.role})` : ''}`,
    )
    return this.#connectResult(session)
  }

  /** Stops every job, timer and connection and the node. Safe to call twice. */
  async disconnect(): Promise<void> {
    await this.#connecting?.catch(() => {})
    const session = this.#session
    this.#session = undefined
    if (session === undefined) return
    await this.#stop(session)
    this.#debug('sdk', 'info', 'disconnected')
  }

  /**
   * Nodes that can run jobs for `model`: public nodes from the model's DHT provider records, and the
   * members of the SDK's pool ring (asked of a connected member over `/meshnet/pool-ring/1.0.0`).
   * Emits `nodes:discovered`.
   */
  async discoverNodes(options: DiscoverNodesOptions = {}): Promise<DiscoveredNode[]> {
    return this.#discover(this.#require('discoverNodes()'), options, 'always')
  }

  async #discover(
    session: Session,
    options: DiscoverNodesOptions,
    announce: 'always' | 'changed',
  ): Promise<DiscoveredNode[]> {
    const { discoveryOptions, enableDHT } = this.config.p2pConfig
    const poolId = options.poolId ?? session.pool?.poolId
    const cacheKey = `${options.model ?? NO_MODEL}\u0000${poolId ?? ''}`
    const cached = session.discovered.get(cacheKey)
    const fresh = cached !== undefined && Date.now() - cached.at < discoveryOptions.interval
    if (fresh && options.forceRefresh !== true && !discoveryOptions.forceRefresh) return cached.nodes
    if (options.model === undefined && poolId === undefined) {
      throw new NoNodesFoundError('discoverNodes() needs a model (public nodes are found by it) or a pool', {
        hint: 'pass { model: "<file name or sha256>" }, or give the SDK a dataDir holding a pool certificate',
      })
    }
    const found = new Map<string, DiscoveredNode>()
    const limit = this.#deadline(discoveryOptions.timeout, options.signal)
    try {
      await Promise.all([
        enableDHT && options.model !== undefined
          ? this.#fromProviderRecords(session, options.model, found, limit.signal)
          : undefined,
        poolId === undefined
          ? undefined
          : this.#fromPool(session, poolId, options.model, found, limit.signal),
      ])
    } finally {
      limit.clear()
    }
    options.signal?.throwIfAborted()
    const connected = new Set(session.node.libp2p.getPeers().map(String))
    const nodes = [...found.values()]
      .map((node) => ({ ...node, connected: connected.has(node.nodeId) }))
      .sort((a, b) => Number(b.connected) - Number(a.connected))
      .slice(0, discoveryOptions.maxPeers)
    session.discovered.set(cacheKey, { at: Date.now(), nodes })
    this.#debug('sdk', 'debug', `discovered ${nodes.length} nodes for ${options.model ?? `pool ${poolId}`}`)
    const ids = (list: DiscoveredNode[]) =>
      list
        .map((n) => n.nodeId)
        .sort()
        .join()
    if (announce === 'always' || cached === undefined || ids(cached.nodes) !== ids(nodes)) {
      this.#emit('nodes:discovered', { model: options.model, nodes })
    }
    return nodes
  }

  /** Runs a job and returns the finished result (tokens are also emitted as `stream:token`). */
  submitJob(request: InferenceRequest): Promise<JobResult> {
    return this.streamInference(request).result
  }

  /**
   * Streams a completion: iterate the returned object for tokens as they arrive, or await
   * `.result`. Emits `stream:token` per token and `stream:end` at the end. Before the first token
   * a failed attempt (node unreachable, rate-limited, busy, timed out) is retried on the next node,
   * `maxRetries` times, `retryDelay` apart; after it, failures end the stream.
   */
  streamInference(request: InferenceRequest): InferenceStream {
    const requestId = randomUUID()
    const queue = new TokenQueue<JobToken>()
    const result = (async () => {
      const session = this.#require('streamInference()')
      const controller = new AbortController()
      session.jobs.add(controller)
      try {
        const run = this.#run(session, request, controller.signal)
        for (;;) {
          const step = await run.next()
          if (step.done) return step.value
          queue.push(step.value.token)
          this.#emit('stream:token', { requestId, nodeId: step.value.nodeId, token: step.value.token })
        }
      } finally {
        session.jobs.delete(controller)
      }
    })()
    result.then(
      (value) => {
        queue.end()
        this.#emit('stream:end', { requestId, result: value, cancelled: false })
      },
      (err: Error) => {
        queue.fail(err)
        this.#emit('stream:end', { requestId, error: err, cancelled: request.signal?.aborted === true })
      },
    )
    return { requestId, result, [Symbol.asyncIterator]: () => queue[Symbol.asyncIterator]() }
  }

  async *#run(
    session: Session,
    request: InferenceRequest,
    sessionSignal: AbortSignal,
  ): AsyncGenerator<{ nodeId: string; token: JobToken }, JobResult, undefined> {
    const p2p = this.config.p2pConfig
    const { target, poolId: requestedPool, nodeId, signal, ...job } = request
    const poolId = target === 'public' ? undefined : (requestedPool ?? session.pool?.poolId)
    if (target === 'pool' && poolId === undefined) {
      throw new NoNodesFoundError(
        'target "pool" needs a pool: give the SDK a dataDir with a pool certificate',
      )
    }
    const candidates = await this.#candidates(session, { model: job.model, poolId, nodeId, signal })
    let lastError: Error | undefined
    for (let attempt = 0; attempt <= p2p.maxRetries; attempt++) {
      if (attempt > 0) await sleep(p2p.retryDelay, undefined, { signal: anySignal(signal, sessionSignal) })
      const peer = candidates[attempt % candidates.length]!
      const idle = this.#idleTimer(p2p.requestTimeout, [signal, sessionSignal])
      let started = false
      try {
        await this.#ready(session, peer, poolId, idle.signal)
        this.#debug(
          'job',
          'debug',
          `job on ${peer.nodeId} (attempt ${attempt + 1}, ${poolId ? `pool ${poolId}` : 'public'})`,
        )
        const tokens = requestJob(
          session.node,
          peerTarget(peer),
          { ...job, ...(poolId ? { poolId } : {}) },
          { signal: idle.signal, timeoutMs: p2p.dialTimeout },
        )
        for (;;) {
          const step = await tokens.next()
          idle.reset()
          if (step.done) return step.value
          started = true
          yield { nodeId: peer.nodeId, token: step.value }
        }
      } catch (err) {
        signal?.throwIfAborted()
        if (session.limit !== undefined) throw session.limit
        if (sessionSignal.aborted) throw new NotConnectedError('a running job')
        const error = idle.timedOut()
          ? new RequestTimeoutError(`${peer.nodeId} sent nothing for ${p2p.requestTimeout} ms`, {
              cause: err,
            })
          : (err as Error)
        if (started || !retryable(error) || attempt === p2p.maxRetries) throw error
        lastError = error
        this.#debug(
          'job',
          'info',
          `attempt ${attempt + 1} on ${peer.nodeId} failed, retrying: ${error.message}`,
        )
      } finally {
        idle.clear()
      }
    }
    throw lastError ?? new NoNodesFoundError('no attempt was made')
  }

  /** Snapshot of the node: connections, peers, bytes, protocols, DHT and NAT, from libp2p itself. */
  async getP2PMetrics(): Promise<P2PMetrics> {
    const session = this.#require('getP2PMetrics()')
    const { node, traffic } = session
    const connections = node.libp2p.getConnections()
    const openStreams: Record<string, number> = {}
    for (const connection of connections) {
      for (const stream of connection.streams) {
        const protocol = stream.protocol ?? '(negotiating)'
        openStreams[protocol] = (openStreams[protocol] ?? 0) + 1
      }
    }
    const dht = node.libp2p.services.dht
    this.#updateRates(session)
    return {
      timestamp: Date.now(),
      uptimeMs: Date.now() - session.startedAt,
      connections: {
        total: connections.length,
        inbound: connections.filter((c) => c.direction === 'inbound').length,
        outbound: connections.filter((c) => c.direction === 'outbound').length,
        limited: connections.filter((c) => c.limits !== undefined).length,
        list: connections.map((connection) => connectionInfo(connection, traffic)),
      },
      peers: { connected: node.libp2p.getPeers().length, known: (await node.libp2p.peerStore.all()).length },
      bytes:
        traffic === undefined ? undefined : { ...traffic.totals, perSecond: { ...session.rates.perSecond } },
      protocols: {
        handled: node.libp2p.getProtocols(),
        openStreams,
        traffic: Object.fromEntries(
          [...(traffic?.protocols ?? [])].map(([protocol, counts]) => [protocol, { ...counts }]),
        ),
      },
      dht: { enabled: dht !== undefined, mode: dht?.getMode(), routingTableSize: routingTableSize(dht) },
      nat: node.connectivity(),
      libp2p: (await traffic?.snapshot()) ?? {},
    }
  }

  /** Whether the SDK can do its job, and if not, why. Works before connect() too. */
  async getSystemHealthReport(): Promise<SystemHealthReport> {
    const session = this.#session
    const base = { timestamp: Date.now(), mode: this.config.mode }
    if (session === undefined) {
      return {
        ...base,
        status: 'disconnected',
        issues: ['not connected: call connect()'],
        p2p: {
          connected: false,
          nodeId: undefined,
          uptimeMs: 0,
          connections: 0,
          peers: 0,
          bootstrap: { configured: this.config.p2pConfig.bootstrapNodes.length, connected: 0 },
          dht: { enabled: this.config.p2pConfig.enableDHT, routingTableSize: 0 },
          nat: 'unknown',
          dataLimit: undefined,
        },
        pool: undefined,
        jobs: { running: 0 },
      }
    }
    const { node, gate, pool } = session
    const peers = new Set(node.libp2p.getPeers().map(String))
    const bootstrapIds = this.config.p2pConfig.bootstrapNodes.map(lastPeerId)
    const bootstrapConnected = bootstrapIds.filter((id) => peers.has(id)).length
    const dht = node.libp2p.services.dht
    const tableSize = routingTableSize(dht)
    const membersConnected = pool && gate ? gate.members(pool.poolId).length : 0
    const issues: string[] = []
    if (session.limit) issues.push(session.limit.shortMessage)
    if (peers.size === 0) issues.push('no peer is connected')
    if (bootstrapIds.length > 0 && bootstrapConnected === 0) issues.push('no bootstrap node is connected')
    if (dht !== undefined && tableSize === 0) issues.push('the DHT routing table is empty')
    if (pool && membersConnected === 0) issues.push(`no member of pool ${pool.poolId} is connected`)
    if (pool && pool.expiresAt < Date.now()) issues.push(`the certificate of pool ${pool.poolId} has expired`)
    const status: HealthStatus =
      session.limit !== undefined || peers.size === 0
        ? 'unhealthy'
        : issues.length > 0
          ? 'degraded'
          : 'healthy'
    return {
      ...base,
      status,
      issues,
      p2p: {
        connected: true,
        nodeId: session.identity.nodeId,
        uptimeMs: Date.now() - session.startedAt,
        connections: node.libp2p.getConnections().length,
        peers: peers.size,
        bootstrap: { configured: bootstrapIds.length, connected: bootstrapConnected },
        dht: { enabled: dht !== undefined, routingTableSize: tableSize },
        nat: this.#natType(session),
        dataLimit: session.limit?.shortMessage,
      },
      pool: pool === undefined ? undefined : { ...pool, membersConnected },
      jobs: { running: session.jobs.size },
    }
  }

  /**
   * Checks the network from here: each bootstrap node (dial and ping), discovery (a DHT lookup of
   * the peers closest to us, mDNS and custom modules' finds), and NAT status from AutoNAT.
   */
  async testP2PConnectivity(options: { signal?: AbortSignal } = {}): Promise<ConnectivityTestResult> {
    const session = this.#require('testP2PConnectivity()')
    const { node } = session
    const p2p = this.config.p2pConfig
    const bootstrapNodes = await Promise.all(
      p2p.bootstrapNodes.map(async (address) => {
        try {
          const latencyMs = await node.ping(multiaddr(address), {
            timeoutMs: p2p.dialTimeout,
            ...(options.signal ? { signal: options.signal } : {}),
          })
          return { address, reachable: true, latencyMs }
        } catch (err) {
          return { address, reachable: false, error: (err as Error).message }
        }
      }),
    )
    const dht = node.libp2p.services.dht
    const dhtResult = { enabled: dht !== undefined, routingTableSize: routingTableSize(dht), closestPeers: 0 }
    let dhtError: string | undefined
    if (dht !== undefined) {
      const limit = this.#deadline(p2p.discoveryOptions.timeout, options.signal)
      try {
        for await (const event of dht.getClosestPeers(session.identity.peerId.toMultihash().bytes, {
          signal: limit.signal,
        })) {
          if (event.name === 'FINAL_PEER') dhtResult.closestPeers++
        }
      } catch (err) {
        dhtError = (err as Error).message
      } finally {
        limit.clear()
      }
    }
    const bootstrapIds = new Set(p2p.bootstrapNodes.map(lastPeerId))
    const known = await node.libp2p.peerStore.all()
    const discovered = known.filter((peer) => !bootstrapIds.has(peer.id.toString())).length
    const nat = node.connectivity()
    return {
      bootstrap: bootstrapNodes.length === 0 || bootstrapNodes.some((b) => b.reachable),
      bootstrapNodes,
      discovery: dhtResult.closestPeers > 0 || discovered > 0,
      discoveryDetails: {
        dht: { ...dhtResult, ...(dhtError ? { error: dhtError } : {}) },
        mdns: { enabled: node.options.mdns },
        discoveredPeers: discovered,
        knownPeers: known.length,
      },
      natType: this.#natType(session),
      nat: { ...nat, addresses: node.multiaddrs().map(String) },
    }
  }

  /**
   * Latency (libp2p ping) and throughput (`/perf/1.0.0`) to peers. Bandwidth needs the peer to run
   * the perf service; a peer that does not is reported with the reason, not with made-up figures.
   */
  async testNetworkPerformance(options: NetworkPerformanceOptions = {}): Promise<NetworkPerformanceResult> {
    const session = this.#require('testNetworkPerformance()')
    const { node } = session
    const p2p = this.config.p2pConfig
    const pings = options.pings ?? 5
    const bytes = options.bytes ?? 1024 * 1024
    const targets = options.peers ?? [...new Set(node.libp2p.getPeers().map(String))].slice(0, 8)
    const peers: PeerPerformance[] = []
    for (const nodeId of targets) {
      options.signal?.throwIfAborted()
      const peerId = peerIdFromString(nodeId)
      const errors: string[] = []
      const samples: number[] = []
      let failures = 0
      for (let i = 0; i < pings; i++) {
        try {
          samples.push(await this.#ping(session, peerId, p2p.dialTimeout, options.signal))
        } catch (err) {
          failures++
          errors.push(`ping: ${(err as Error).message}`)
          if (failures > 1) break
        }
      }
      let bandwidth: PerfResult | undefined
      if (bytes > 0) {
        const protocols = await node.libp2p.peerStore
          .get(peerId)
          .then((peer) => peer.protocols)
          .catch(() => [] as string[])
        if (!protocols.includes(PERF_PROTOCOL)) {
          errors.push(`bandwidth: the peer does not run ${PERF_PROTOCOL}`)
        } else {
          const limit = this.#deadline(p2p.requestTimeout, options.signal)
          try {
            bandwidth = await (node.libp2p.services as unknown as { perf: Perf }).perf.measure(peerId, {
              uploadBytes: bytes,
              downloadBytes: bytes,
              signal: limit.signal,
            })
          } catch (err) {
            errors.push(`bandwidth: ${(err as Error).message}`)
          } finally {
            limit.clear()
          }
        }
      }
      peers.push({
        nodeId,
        latency:
          samples.length === 0
            ? undefined
            : {
                samples: samples.length,
                failures,
                minMs: Math.min(...samples),
                avgMs: mean(samples),
                maxMs: Math.max(...samples),
              },
        bandwidth,
        errors,
      })
    }
    const latencies = peers.flatMap((p) => (p.latency ? [p.latency.avgMs] : []))
    const measured = peers.flatMap((p) => (p.bandwidth ? [p.bandwidth] : []))
    return {
      avgLatency: latencies.length === 0 ? undefined : mean(latencies),
      bandwidth:
        measured.length === 0
          ? undefined
          : {
              uploadBitsPerSecond: Math.round(mean(measured.map((m) => m.uploadBitsPerSecond))),
              downloadBitsPerSecond: Math.round(mean(measured.map((m) => m.downloadBitsPerSecond))),
            },
      peers,
    }
  }

  // --- connecting ---------------------------------------------------------------------------

  async #dialBootstrap(session: Session): Promise<BootstrapResult[]> {
    const p2p = this.config.p2pConfig
    const results: BootstrapResult[] = p2p.bootstrapNodes.map((address) => ({
      address,
      nodeId: lastPeerId(address),
      reachable: false,
      attempts: 0,
    }))
    if (results.length === 0) return results
    for (let round = 0; round <= p2p.maxRetries; round++) {
      if (round > 0) await sleep(p2p.retryDelay)
      await Promise.all(
        results
          .filter((result) => !result.reachable)
          .map(async (result) => {
            result.attempts++
            const limit = this.#deadline(p2p.dialTimeout)
            try {
              await session.node.libp2p.dial(multiaddr(result.address), { signal: limit.signal })
              result.reachable = true
              delete result.error
              this.#debug('sdk', 'debug', `bootstrap node ${result.address} reachable`)
            } catch (err) {
              result.error = limit.timedOut()
                ? `no answer within ${p2p.dialTimeout} ms`
                : (err as Error).message
              this.#debug('sdk', 'info', `bootstrap node ${result.address} failed: ${result.error}`)
            } finally {
              limit.clear()
            }
          }),
      )
      if (results.some((result) => result.reachable)) break
    }
    return results
  }

  #listen(session: Session): void {
    const { node } = session
    const { security, transports, connectionManager } = this.config.p2pConfig
    node.libp2p.addEventListener('peer:connect', (event) => {
      const peerId = event.detail.toString()
      const address = node.libp2p.getConnections(event.detail)[0]?.remoteAddr.toString()
      this.#debug('sdk', 'debug', `peer ${peerId} connected`)
      this.#emit('peer:connect', { peerId, ...(address ? { address } : {}) })
    })
    node.libp2p.addEventListener('peer:disconnect', (event) => {
      this.#emit('peer:disconnect', { peerId: event.detail.toString() })
    })
    node.libp2p.addEventListener('peer:discovery', (event) => {
      const peerId = event.detail.id.toString()
      this.#debug('sdk', 'debug', `discovered peer ${peerId}`)
      if (connectionManager.autoDial && session.limit === undefined) void this.#autoDial(session)
    })
    node.libp2p.addEventListener('connection:open', (event) => {
      const connection = event.detail
      for (const [name, transport] of [
        ['websocket', transports.websocket],
        ['tcp', transports.tcp],
      ] as const) {
        if (transport.maxConnections === undefined || transportOf(connection.remoteAddr) !== name) continue
        const open = node.libp2p.getConnections().filter((c) => transportOf(c.remoteAddr) === name)
        if (open.length > transport.maxConnections) {
          this.#debug('sdk', 'info', `closing a ${name} connection over transports.${name}.maxConnections`)
          void connection
            .close()
            .catch(() => connection.abort(new Error('over the transport connection cap')))
          return
        }
      }
      const hook = security.authenticate
      if (hook === undefined) return
      const peer = connection.remotePeer.toString()
      const verdict = (async () => {
        const limit = this.#deadline(this.config.p2pConfig.requestTimeout)
        try {
          return (
            (await Promise.race([hook(connection.remotePeer, connection), abortion(limit.signal)])) === true
          )
        } catch (err) {
          this.#debug('sdk', 'info', `security.authenticate threw for ${peer}: ${(err as Error).message}`)
          return false
        } finally {
          limit.clear()
        }
      })()
      session.verdicts.set(peer, verdict)
      void verdict.then(async (ok) => {
        if (ok || this.#session === undefined) return
        this.#debug('sdk', 'info', `security.authenticate refused ${peer}; closing and denying it`)
        await node.denyPeer(peer).catch(() => {})
      })
    })
  }

  /** Dials a node, waits for security.authenticate, and exchanges certificates for pool jobs. */
  async #ready(
    session: Session,
    peer: DiscoveredNode,
    poolId: string | undefined,
    signal: AbortSignal,
  ): Promise<void> {
    const limit = this.#deadline(this.config.p2pConfig.dialTimeout, signal)
    let connection: Connection
    try {
      connection = await session.node.libp2p.dial(peerTarget(peer), { signal: limit.signal })
    } finally {
      limit.clear()
    }
    const verdict = session.verdicts.get(peer.nodeId)
    if (verdict !== undefined && !(await verdict))
      throw new PeerRefusedError(peer.nodeId, 'the hook returned false')
    if (poolId !== undefined) await this.#exchange(session, connection)
  }

  /** Certificate exchange over one connection, once (the gate also starts one on each outbound connection). */
  #exchange(session: Session, connection: Connection): Promise<string[]> {
    const { gate } = session
    if (gate === undefined) return Promise.resolve([])
    let exchange = session.exchanged.get(connection.id)
    if (exchange === undefined) {
      exchange = gate.exchange(connection.remotePeer).catch((err: Error) => {
        session.exchanged.delete(connection.id)
        this.#debug(
          'pool',
          'info',
          `certificate exchange with ${connection.remotePeer} failed: ${err.message}`,
        )
        return []
      })
      session.exchanged.set(connection.id, exchange)
    }
    return exchange
  }

  // --- discovery ----------------------------------------------------------------------------

  async #fromProviderRecords(
    session: Session,
    model: string,
    found: Map<string, DiscoveredNode>,
    signal: AbortSignal,
  ): Promise<void> {
    const { node } = session
    const self = session.identity.nodeId
    try {
      for await (const provider of node.libp2p.contentRouting.findProviders(await modelProviderKey(model), {
        signal,
      })) {
        const nodeId = provider.id.toString()
        if (nodeId === self) continue
        let addrs = provider.multiaddrs
        if (addrs.length === 0) {
          addrs = await node.libp2p.peerStore
            .get(provider.id)
            .then((peer) => peer.addresses.map((a) => a.multiaddr))
            .catch(() => [])
        }
        merge(found, {
          nodeId,
          addresses: addrs.map((addr) => withPeerId(addr, nodeId)),
          sources: ['dht'],
          public: true,
          pools: [],
          connected: false,
        })
        if (found.size >= this.config.p2pConfig.discoveryOptions.maxPeers) break
      }
    } catch (err) {
      if (!signal.aborted)
        this.#debug('sdk', 'info', `DHT lookup of ${model} ended: ${(err as Error).message}`)
    }
  }

  async #fromPool(
    session: Session,
    poolId: string,
    model: string | undefined,
    found: Map<string, DiscoveredNode>,
    signal: AbortSignal,
  ): Promise<void> {
    const members = await this.#poolMembers(session, poolId, signal)
    for (const member of members) {
      merge(found, {
        nodeId: member,
        addresses: [],
        sources: ['pool'],
        public: false,
        pools: [poolId],
        connected: true,
      })
    }
    for (const member of members.slice(0, 3)) {
      try {
        const status = await requestRingStatus(session.node, peerIdFromString(member), poolId, {
          signal,
          timeoutMs: this.config.p2pConfig.requestTimeout,
        })
        if (
          model !== undefined &&
          status.model !== null &&
          model !== status.model.name &&
          model !== status.model.sha256
        ) {
          this.#debug('pool', 'info', `pool ${poolId} serves ${status.model.name}, not ${model}`)
          for (const m of members) found.delete(m)
          return
        }
        for (const ringMember of status.members) {
          if (ringMember.nodeId === session.identity.nodeId) continue
          merge(found, {
            nodeId: ringMember.nodeId,
            addresses: ringMember.addresses.map((a) => withPeerId(multiaddr(a), ringMember.nodeId)),
            sources: ['pool'],
            public: false,
            pools: [poolId],
            ...(status.model ? { model: status.model } : {}),
            connected: false,
          })
        }
        return
      } catch (err) {
        if (signal.aborted) return
        this.#debug('pool', 'info', `ring status from ${member} failed: ${(err as Error).message}`)
      }
    }
  }

  /**
   * Connected peers that proved membership of `poolId` (exchanging certificates with those not yet
   * asked); when there are none, the pool's DHT rendezvous providers are dialed and asked.
   */
  async #poolMembers(session: Session, poolId: string, signal: AbortSignal): Promise<string[]> {
    const { node, gate } = session
    if (gate === undefined) return []
    const members = new Set<string>()
    const check = async (connections: Connection[]) => {
      await Promise.all(
        connections.map(async (connection) => {
          const proved = await this.#exchange(session, connection)
          if (proved.includes(poolId) || gate.isMember(connection.remotePeer, poolId)) {
            members.add(connection.remotePeer.toString())
          }
        }),
      )
    }
    await check(node.libp2p.getConnections())
    if (members.size > 0 || !this.config.p2pConfig.enableDHT) return [...members]
    try {
      for await (const provider of node.libp2p.contentRouting.findProviders(await poolRendezvousKey(poolId), {
        signal,
      })) {
        if (provider.id.equals(session.identity.peerId)) continue
        const connection = await node.libp2p
          .dial(
            provider.multiaddrs.length > 0
              ? provider.multiaddrs.map((a) => multiaddr(withPeerId(a, provider.id.toString())))
              : provider.id,
            { signal },
          )
          .catch(() => undefined)
        if (connection) await check([connection])
        if (members.size > 0) break
      }
    } catch (err) {
      if (!signal.aborted)
        this.#debug('pool', 'info', `pool rendezvous lookup ended: ${(err as Error).message}`)
    }
    return [...members]
  }

  async #candidates(
    session: Session,
    options: {
      model: string | undefined
      poolId: string | undefined
      nodeId: string | undefined
      signal: AbortSignal | undefined
    },
  ): Promise<DiscoveredNode[]> {
    if (options.nodeId !== undefined) {
      const known = [...session.discovered.values()]
        .flatMap((entry) => entry.nodes)
        .find((n) => n.nodeId === options.nodeId)
      return [
        known ?? {
          nodeId: options.nodeId,
          addresses: [],
          sources: [],
          public: false,
          pools: options.poolId ? [options.poolId] : [],
          connected: false,
        },
      ]
    }
    if (options.poolId !== undefined) {
      const nodes = await this.discoverNodes({
        poolId: options.poolId,
        ...(options.signal ? { signal: options.signal } : {}),
      })
      const members = nodes.filter((n) => n.sources.includes('pool'))
      if (members.length > 0) return members
      throw new NoNodesFoundError(`no member of pool ${options.poolId} could be reached`, {
        hint: 'check that pool members are online and that a bootstrap node or mDNS leads to them',
      })
    }
    if (options.model === undefined) {
      throw new NoNodesFoundError(
        'a public job needs a model: public nodes are found by the model they serve',
      )
    }
    const nodes = await this.discoverNodes({
      model: options.model,
      ...(options.signal ? { signal: options.signal } : {}),
    })
    const open = nodes.filter((n) => n.public)
    if (open.length > 0) return open
    throw new NoNodesFoundError(`no public node serving ${options.model} was found in the DHT`, {
      hint: 'public nodes run mesh start --public --model <file>; check the bootstrap nodes and the model name or hash',
    })
  }

  // --- background work ------------------------------------------------------------------------

  #startTimers(session: Session): void {
    const p2p = this.config.p2pConfig
    const every = (ms: number, task: () => Promise<unknown>) => {
      let running = false
      const timer = setInterval(() => {
        if (running || session.lifetime.signal.aborted) return
        running = true
        void task()
          .catch((err: Error) => this.#debug('sdk', 'debug', `background task failed: ${err.message}`))
          .finally(() => {
            running = false
          })
      }, ms)
      timer.unref()
      session.timers.push(timer)
    }
    if (p2p.keepAlive.enabled) every(p2p.keepAlive.interval, () => this.#keepAlive(session))
    if (p2p.connectionManager.autoDial)
      every(p2p.connectionManager.autoDialInterval, () => this.#autoDial(session))
    const dht = session.node.libp2p.services.dht
    if (dht !== undefined)
      every(p2p.dhtOptions.refreshInterval, () =>
        dht.refreshRoutingTable({ signal: session.lifetime.signal }),
      )
    if (p2p.discoveryOptions.interval > 0)
      every(p2p.discoveryOptions.interval, () => this.#rediscover(session))
    if (session.traffic !== undefined) {
      every(p2p.metrics.movingAverageInterval, async () => this.#updateRates(session, true))
    }
  }

  /** Pings every connected peer; one that does not answer within keepAlive.timeout is hung up on. */
  async #keepAlive(session: Session): Promise<void> {
    const { node } = session
    const { keepAlive } = this.config.p2pConfig
    await Promise.all(
      node.libp2p.getPeers().map(async (peer) => {
        try {
          await this.#ping(session, peer, keepAlive.timeout, session.lifetime.signal)
        } catch (err) {
          if (session.lifetime.signal.aborted) return
          this.#debug(
            'sdk',
            'info',
            `keep-alive ping to ${peer} failed (${(err as Error).message}); hanging up`,
          )
          await node.libp2p.hangUp(peer).catch(() => {})
        }
      }),
    )
  }

  /** Tops connections up to connectionManager.minConnections: bootstrap nodes first, then known peers. */
  async #autoDial(session: Session): Promise<void> {
    const { node } = session
    const p2p = this.config.p2pConfig
    if (session.limit !== undefined || session.lifetime.signal.aborted || session.autoDialing) return
    const connected = new Set(node.libp2p.getPeers().map(String))
    const missing = p2p.connectionManager.minConnections - connected.size
    if (missing <= 0) return
    session.autoDialing = true
    try {
      await this.#dialUpTo(session, connected, missing)
    } finally {
      session.autoDialing = false
    }
  }

  async #dialUpTo(session: Session, connected: Set<string>, wanted: number): Promise<void> {
    const { node } = session
    const p2p = this.config.p2pConfig
    let missing = wanted
    const targets: Array<Multiaddr | PeerId> = []
    for (const address of p2p.bootstrapNodes) {
      if (!connected.has(lastPeerId(address))) targets.push(multiaddr(address))
    }
    for (const peer of await node.libp2p.peerStore.all()) {
      const id = peer.id.toString()
      if (connected.has(id) || id === session.identity.nodeId || peer.addresses.length === 0) continue
      if (p2p.bootstrapNodes.some((address) => lastPeerId(address) === id)) continue
      targets.push(peer.id)
    }
    for (const target of targets) {
      if (missing <= 0 || session.lifetime.signal.aborted) break
      const limit = this.#deadline(p2p.dialTimeout, session.lifetime.signal)
      try {
        await node.libp2p.dial(target, { signal: limit.signal })
        missing--
        this.#debug('sdk', 'debug', `auto-dialed ${target.toString()}`)
      } catch (err) {
        this.#debug('sdk', 'debug', `auto-dial of ${target.toString()} failed: ${(err as Error).message}`)
      } finally {
        limit.clear()
      }
    }
  }

  /** Re-runs the discoveries asked for so far; emits `nodes:discovered` only when the set changed. */
  async #rediscover(session: Session): Promise<void> {
    for (const key of [...session.discovered.keys()]) {
      const [model, poolId] = key.split('\u0000')
      await this.#discover(
        session,
        { ...(model === NO_MODEL ? {} : { model }), ...(poolId ? { poolId } : {}), forceRefresh: true },
        'changed',
      ).catch((err: Error) => this.#debug('sdk', 'debug', `rediscovery failed: ${err.message}`))
    }
  }

  #updateRates(session: Session, roll = false): void {
    const { traffic, rates } = session
    if (traffic === undefined) return
    const now = Date.now()
    const seconds = (now - rates.at) / 1000
    if (seconds <= 0) return
    const perSecond = {
      sent: Math.round((traffic.totals.sent - rates.totals.sent) / seconds),
      received: Math.round((traffic.totals.received - rates.totals.received) / seconds),
    }
    if (roll) session.rates = { at: now, totals: { ...traffic.totals }, perSecond }
    else if (rates.perSecond.sent === 0 && rates.perSecond.received === 0) rates.perSecond = perSecond
  }

  #dataLimitReached(session: Session, limit: string, totals: ByteCounts): void {
    const value = this.config.p2pConfig.connectionManager[limit as 'maxData']
    session.limit = new DataLimitExceededError(
      `connectionManager.${limit} (${value} bytes) exceeded: ${totals.sent} bytes sent, ${totals.received} received since connect()`,
      { details: { limit, value, ...totals } },
    )
    this.#debug('sdk', 'error', session.limit.shortMessage)
    for (const job of session.jobs) job.abort(session.limit)
    for (const connection of session.node.libp2p.getConnections()) connection.abort(session.limit)
  }

  // --- helpers --------------------------------------------------------------------------------

  #require(what: string): Session {
    const session = this.#session
    if (session === undefined) throw new NotConnectedError(what)
    if (session.limit !== undefined) throw session.limit
    return session
  }

  async #stop(session: Session): Promise<void> {
    session.lifetime.abort(new NotConnectedError('the SDK'))
    for (const timer of session.timers) clearInterval(timer)
    session.timers.length = 0
    for (const job of session.jobs) job.abort(new NotConnectedError('a running job'))
    await session.gate?.stop().catch(() => {})
    await session.node.stop()
  }

  #connectResult(session: Session): ConnectResult {
    return {
      nodeId: session.identity.nodeId,
      addresses: session.node.multiaddrs().map(String),
      bootstrap: session.bootstrap.map((b) => ({ ...b })),
      pool: session.pool,
    }
  }

  /**
   * One libp2p ping, tried a second time after a failure other than a timeout: a peer may still be
   * closing our previous ping stream and reset the next one (its inbound ping streams are capped).
   */
  async #ping(
    session: Session,
    peer: PeerId,
    timeoutMs: number,
    signal: AbortSignal | undefined,
  ): Promise<number> {
    const once = () => session.node.ping(peer, { timeoutMs, ...(signal ? { signal } : {}) })
    try {
      return await once()
    } catch (err) {
      if ((err as Error).name === 'PeerTimeoutError' || signal?.aborted) throw err
      await sleep(PING_RETRY_MS, undefined, signal ? { signal } : {})
      return once()
    }
  }

  #natType(session: Session): NatType {
    if (this.config.p2pConfig.localOnly) return 'local-only'
    const status = session.node.connectivity()
    if (status.publiclyReachable) return 'public'
    if (status.reservedRelays.length > 0) return 'relayed'
    return session.node.options.autoNAT ? 'private' : 'unknown'
  }

  #deadline(ms: number, parent?: AbortSignal) {
    return this.#idleTimer(ms, [parent])
  }

  /** An AbortSignal that fires after `ms` without `reset()`, or when a parent fires. */
  #idleTimer(ms: number, parents: Array<AbortSignal | undefined>) {
    const controller = new AbortController()
    let expired = false
    const fire = () => {
      expired = true
      controller.abort(new DOMException(`no progress within ${ms} ms`, 'TimeoutError'))
    }
    let timer = setTimeout(fire, ms)
    const onParent = (event: Event) => controller.abort((event.target as AbortSignal).reason)
    for (const parent of parents) {
      if (parent?.aborted) controller.abort(parent.reason)
      else parent?.addEventListener('abort', onParent, { once: true })
    }
    return {
      signal: controller.signal,
      timedOut: () => expired,
      reset: () => {
        clearTimeout(timer)
        if (!controller.signal.aborted) timer = setTimeout(fire, ms)
      },
      clear: () => {
        clearTimeout(timer)
        for (const parent of parents) parent?.removeEventListener('abort', onParent)
      },
    }
  }

  #debug(subsystem: P2PDebugEvent['subsystem'], level: DebugLevel, message: string): void {
    if (!this.config.debug || !levelEnabled(level, this.#level)) return
    this.#emit('p2p:debug', { subsystem, level, component: 'sdk', message, timestamp: Date.now() })
  }

  /** Emits without letting a throwing listener break the SDK's own work. */
  #emit<K extends keyof FabstirSDKEvents>(name: K, ...args: FabstirSDKEvents[K]): void {
    try {
      ;(this.emit as (name: K, ...args: FabstirSDKEvents[K]) => boolean)(name, ...args)
    } catch {}
  }
}

function retryable(err: Error): boolean {
  switch (err.name) {
    case 'DialError':
    case 'PeerTimeoutError':
    case 'RequestTimeoutError':
    case 'JobProtocolError':
    case 'PeerRefusedError':
    case 'StreamEndedError':
      return true
    case 'JobFailedError':
      return ['ERR_RATE_LIMITED', 'ERR_BUSY', 'ERR_OVERLOADED', 'ERR_NO_RING'].includes(
        (err as Error & { code: string }).code,
      )
    default:
      return false
  }
}

function peerTarget(peer: DiscoveredNode): PeerId | Multiaddr[] {
  return peer.addresses.length > 0 ? peer.addresses.map((a) => multiaddr(a)) : peerIdFromString(peer.nodeId)
}

function merge(found: Map<string, DiscoveredNode>, node: DiscoveredNode): void {
  const known = found.get(node.nodeId)
  if (known === undefined) {
    found.set(node.nodeId, node)
    return
  }
  known.addresses = [...new Set([...known.addresses, ...node.addresses])]
  known.sources = [...new Set([...known.sources, ...node.sources])]
  known.pools = [...new Set([...known.pools, ...node.pools])]
  known.public ||= node.public
  known.model ??= node.model
}

function withPeerId(addr: Multiaddr, nodeId: string): string {
  const text = addr.toString()
  return text.endsWith(`/p2p/${nodeId}`) ? text : `${text}/p2p/${nodeId}`
}

function lastPeerId(address: string): string {
  return address.split('/p2p/').at(-1) ?? ''
}

function transportOf(addr: Multiaddr): 'tcp' | 'websocket' | 'other' {
  const text = addr.toString()
  if (text.includes('/p2p-circuit')) return 'other'
  if (/\/wss?(\/|$)/.test(text)) return 'websocket'
  return text.includes('/tcp/') ? 'tcp' : 'other'
}

function connectionInfo(connection: Connection, traffic: TrafficMetrics | undefined): ConnectionInfo {
  const bytes = traffic?.connections.get(connection.remoteAddr.toString())
  return {
    peerId: connection.remotePeer.toString(),
    remoteAddr: connection.remoteAddr.toString(),
    direction: connection.direction,
    status: connection.status,
    streams: connection.streams.length,
    multiplexer: connection.multiplexer,
    encryption: connection.encryption,
    limited: connection.limits !== undefined,
    openedAt: connection.timeline.open,
    bytes: bytes === undefined ? undefined : { ...bytes },
  }
}

/** Peers in the DHT routing table (kad-dht's own table; its public interface does not type it). */
function routingTableSize(dht: unknown): number {
  return (dht as { routingTable?: { size?: number } } | undefined)?.routingTable?.size ?? 0
}

function mean(values: number[]): number {
  return values.reduce((sum, value) => sum + value, 0) / values.length
}

function anySignal(...signals: Array<AbortSignal | undefined>): AbortSignal {
  return AbortSignal.any(signals.filter((s): s is AbortSignal => s !== undefined))
}

function abortion(signal: AbortSignal): Promise<never> {
  return new Promise((_resolve, reject) => {
    if (signal.aborted) reject(signal.reason)
    signal.addEventListener('abort', () => reject(signal.reason), { once: true })
  })
}
