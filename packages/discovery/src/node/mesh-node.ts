import { mkdir } from 'node:fs/promises'
import { setTimeout as sleep } from 'node:timers/promises'
import { noise } from '@chainsafe/libp2p-noise'
import { autoNAT } from '@libp2p/autonat'
import { bootstrap } from '@libp2p/bootstrap'
import { type CircuitRelayService, circuitRelayServer, circuitRelayTransport } from '@libp2p/circuit-relay-v2'
import { dcutr } from '@libp2p/dcutr'
import { type Identify, type IdentifyPush, identify, identifyPush } from '@libp2p/identify'
import type {
  AbortOptions,
  Connection,
  Libp2p,
  PeerDiscovery,
  PeerId,
  PeerInfo,
  ServiceMap,
  Stream,
} from '@libp2p/interface'
import type { ConnectionManager } from '@libp2p/interface-internal'
import { type KadDHT, kadDHT } from '@libp2p/kad-dht'
import { type MulticastDNSComponents, mdns } from '@libp2p/mdns'
import { peerIdFromString } from '@libp2p/peer-id'
import { type Ping, ping } from '@libp2p/ping'
import { preSharedKey } from '@libp2p/pnet'
import { tcp } from '@libp2p/tcp'
import { type UPnPNAT, uPnPNAT } from '@libp2p/upnp-nat'
import { isLoopback } from '@libp2p/utils'
import { webSockets } from '@libp2p/websockets'
import { yamux } from '@libp2p/yamux'
import type { Logger } from '@meshnet/core'
import { dataDirLayout, ensureDataDir } from '@meshnet/identity'
import { DEFAULT_MAX_FRAME_BYTES, frameStream, StreamEndedError, writeFrame } from '@meshnet/protocols'
import { type Multiaddr, multiaddr } from '@multiformats/multiaddr'
import { FsDatastore } from 'datastore-fs'
import { createLibp2p, type Libp2pOptions, type ServiceFactoryMap } from 'libp2p'
import pkg from '../../package.json' with { type: 'json' }
import { type Connectivity, type ConnectivityStatus, connectivity } from './connectivity.ts'
import { deadline } from './deadline.ts'
import { DEFAULT_MAINTENANCE_MAX_BACKOFF_MS, DEFAULT_PROTOCOL_TIMEOUT_MS } from './defaults.ts'
import { DialError, NodeStartError, PeerTimeoutError } from './errors.ts'
import { dhtAddressMapper, type MeshGater, meshGater } from './gater.ts'
import { type MeshNodeOptions, type ResolvedMeshNodeOptions, resolveMeshNodeOptions } from './options.ts'

/** Wait between attempts when another ping to the same peer holds the one ping stream. */
const PING_SLOT_RETRY_MS = 20

/** The services every mesh node has; the optional ones depend on the options. */
export interface MeshServices extends ServiceMap {
  identify: Identify
  identifyPush: IdentifyPush
  ping: Ping
  connectivity: Connectivity
  /** Absent when `dhtMode` is `off`. */
  dht?: KadDHT
  /** Absent with `localOnly` or `autoNAT: false`. */
  autoNAT?: unknown
  /** Absent with `dcutr: false`. */
  dcutr?: unknown
  /** Present only with `upnp: true`. */
  upnp?: UPnPNAT
  /** Present only on a relay server (`relayServer: true`). */
  relay?: CircuitRelayService
}

/** A peer to dial: its node id, a multiaddr (string or parsed) ending in `/p2p/<id>`, or a PeerId. */
export type PeerTarget = string | PeerId | Multiaddr | Multiaddr[]

export interface DialProtocolOptions extends AbortOptions {
  /** Budget for dial plus protocol negotiation. Default 10 000 ms. */
  timeoutMs?: number
  /**
   * Allow a relayed connection with relay-imposed limits (duration, bytes). Protocols that move
   * little data (certificate exchange, gossip) opt in; shard streams should not.
   */
  runOnLimitedConnection?: boolean
}

export interface RequestOptions extends DialProtocolOptions {
  /** Largest request we send. Default 1 MiB. */
  maxRequestBytes?: number
  /** Largest response we accept. Default 1 MiB. */
  maxResponseBytes?: number
}

export interface RequestContext {
  /** The requester, proven by the noise handshake. */
  peerId: PeerId
  nodeId: string
  connection: Connection
  /** Aborted when the per-request timeout expires or the node stops. */
  signal: AbortSignal
}

export type RequestHandler = (
  request: Uint8Array,
  context: RequestContext,
) => Promise<Uint8Array> | Uint8Array

export interface HandleRequestsOptions {
  /** Largest request accepted; a larger one resets the stream. Default 1 MiB. */
  maxRequestBytes?: number
  /** Largest response the handler may return. Default 1 MiB. */
  maxResponseBytes?: number
  /** Budget for reading the request, running the handler and sending the reply. Default 10 000 ms. */
  timeoutMs?: number
  /** Concurrent requests per connection. Default 32. */
  maxInboundStreams?: number
  runOnLimitedConnection?: boolean
}

/** Requests that ended without a reply being sent, by error name. */
export type RequestDrops = Record<string, number>

/** A started (or startable) libp2p node with Meshnet's defaults and helpers. */
export interface MeshNode<T extends ServiceMap = ServiceMap> {
  readonly libp2p: Libp2p<MeshServices & T>
  readonly nodeId: string
  readonly peerId: PeerId
  /** The validated options, defaults filled in. */
  readonly options: ResolvedMeshNodeOptions
  start(): Promise<void>
  /** Stops libp2p and every timer, socket and listener it holds. Safe to call twice. */
  stop(): Promise<void>
  /** Addresses other nodes can dial, each ending in `/p2p/<node id>`. */
  multiaddrs(): Multiaddr[]
  /** Opens a stream for `protocol`, dialing first if needed, within a time budget. */
  dialProtocol(peer: PeerTarget, protocol: string, options?: DialProtocolOptions): Promise<Stream>
  /** Round-trip time in ms (libp2p ping). */
  ping(peer: PeerTarget, options?: DialProtocolOptions): Promise<number>
  /** Sends one framed request and returns the one framed response. */
  request(
    peer: PeerTarget,
    protocol: string,
    payload: Uint8Array,
    options?: RequestOptions,
  ): Promise<Uint8Array>
  /** Serves `protocol` with one framed request and one framed response per stream. */
  handleRequests(protocol: string, handler: RequestHandler, options?: HandleRequestsOptions): Promise<void>
  /** Finds a peer's addresses through the peer store, then the DHT. */
  findPeer(peer: string | PeerId, options?: AbortOptions & { timeoutMs?: number }): Promise<PeerInfo>
  /** Refuses a peer from now on (both directions) and closes its connections. */
  denyPeer(peer: string | PeerId, options?: AbortOptions): Promise<void>
  /** Takes a peer off the deny list. */
  undenyPeer(peer: string | PeerId): void
  /** Relay reservations and reachability. */
  connectivity(): ConnectivityStatus
  /** Requests served by `handleRequests` that failed, by error name (oversized, timeout, ...). */
  requestDrops(): RequestDrops
}

/**
 * Creates the libp2p node of a Meshnet agent or relay: TCP and WebSockets, noise (always),
 * yamux, identify, ping, the Meshnet Kademlia DHT, bootstrap, mDNS, circuit relay v2, DCUtR,
 * AutoNAT and optional UPnP, with the peer store in the data dir. The key is the node identity,
 * so the libp2p PeerId is the node id.
 *
 * Options are validated first; an invalid one throws InvalidArgumentError naming the field. The
 * node is started unless `start: false`.
 */
export async function createMeshNode<T extends ServiceMap = ServiceMap>(
  input: MeshNodeOptions<T>,
): Promise<MeshNode<T>> {
  const options = resolveMeshNodeOptions(input)
  const extraServices = (input.services ?? {}) as ServiceFactoryMap<T>
  const gate = meshGater({
    allowPeers:
      options.allowPeers === undefined
        ? undefined
        : [...options.allowPeers, ...[...options.bootstrap, ...options.relays].map(peerIdOf)],
    denyPeers: options.denyPeers,
    denyAddresses: options.denyAddresses,
    scope: options.localOnly ? 'loopback' : 'all',
  })
  const datastore =
    options.dataDir === undefined ? undefined : new FsDatastore(dataDirLayout(options.dataDir).datastoreDir)

  const libp2p = await createLibp2p<MeshServices & T>({
    ...libp2pConfig(options, gate, extraServices),
    ...(datastore === undefined ? {} : { datastore }),
    start: false,
  })
  const node = new MeshNodeImpl<T>(libp2p, options, gate, datastore)
  if (options.start) await node.start()
  return node
}

function libp2pConfig<T extends ServiceMap>(
  options: ResolvedMeshNodeOptions,
  gate: MeshGater,
  extraServices: ServiceFactoryMap<T>,
): Libp2pOptions<MeshServices & T> {
  const services: ServiceFactoryMap<MeshServices> = {
    identify: identify(),
    identifyPush: identifyPush(),
    // The DHT, the connection monitor and callers all ping; with one stream per peer (libp2p's
    // default) the connection monitor's ping fails and it aborts a healthy connection.
    ping: ping({ maxOutboundStreams: 16, maxInboundStreams: 16 }),
    connectivity: connectivity({
      relays: options.relays,
      reservations: options.relayReservations,
      autoDelayMs: options.relayAutoDelayMs,
      bootstrap: options.bootstrap,
      intervalMs: options.maintenanceIntervalMs,
      maxBackoffMs: Math.max(options.maintenanceIntervalMs, DEFAULT_MAINTENANCE_MAX_BACKOFF_MS),
      dialTimeoutMs: options.dialTimeoutMs,
    }),
  }
  if (options.dhtMode !== 'off') {
    services.dht = kadDHT({
      protocol: options.dhtProtocol,
      clientMode: options.dhtMode === 'auto' ? undefined : options.dhtMode === 'client',
      peerInfoMapper: dhtAddressMapper(options.localOnly ? 'loopback' : options.dhtAddresses),
      logPrefix: 'meshnet:dht',
      metricsPrefix: 'meshnet_dht',
      ...(options.dhtKBucketSize === undefined ? {} : { kBucketSize: options.dhtKBucketSize }),
    })
  }
  if (options.autoNAT) services.autoNAT = autoNAT()
  if (options.dcutr) services.dcutr = dcutr()
  if (options.upnp) services.upnp = uPnPNAT({ portMappingDescription: 'meshnet' })
  if (options.relayServer) {
    const limits = options.relayServerLimits
    const unlimited = limits.connectionDurationMs === 0 && limits.connectionDataBytes === 0
    services.relay = circuitRelayServer({
      hopTimeout: limits.hopTimeoutMs,
      reservations: {
        maxReservations: limits.maxReservations,
        reservationTtl: limits.reservationTtlMs,
        applyDefaultLimit: !unlimited,
        // libp2p applies both limits or neither; 0 means "no limit" for one of them here.
        defaultDurationLimit:
          limits.connectionDurationMs === 0 ? limits.reservationTtlMs : limits.connectionDurationMs,
        defaultDataLimit:
          limits.connectionDataBytes === 0 ? 2n ** 63n - 1n : BigInt(limits.connectionDataBytes),
      },
    })
  }

  const peerDiscovery: NonNullable<Libp2pOptions['peerDiscovery']> = []
  if (options.bootstrap.length > 0) {
    peerDiscovery.push(bootstrap({ list: options.bootstrap.map(String), timeout: options.bootstrapDelayMs }))
  }
  if (options.mdns) {
    peerDiscovery.push(
      dialingDiscoveredPeers(
        mdns({ serviceTag: options.mdnsServiceTag, interval: options.mdnsIntervalMs }),
        options.dialTimeoutMs,
      ),
    )
  }

  return {
    privateKey: options.identity.privateKey,
    nodeInfo: { name: 'meshnet', version: pkg.version },
    addresses: {
      listen: options.listen,
      announce: options.announce,
      ...(options.localOnly ? { announceFilter: (addrs: Multiaddr[]) => addrs.filter(isLoopback) } : {}),
    },
    transports: [tcp(), ...(options.websockets ? [webSockets()] : []), circuitRelayTransport()],
    // Noise is the only encrypter: there is no option to turn encryption off.
    connectionEncrypters: [noise()],
    streamMuxers: [
      yamux({
        maxInboundStreams: options.maxStreamsPerConnection,
        maxOutboundStreams: options.maxStreamsPerConnection,
        streamOptions: { maxReadBufferLength: options.streamReadBufferBytes },
      }),
    ],
    ...(options.preSharedKey === undefined
      ? {}
      : { connectionProtector: preSharedKey({ psk: new TextEncoder().encode(options.preSharedKey) }) }),
    connectionGater: gate.gater,
    // A ping that misses its deadline on a starved event loop is not a dead connection: the ring's
    // heartbeats and each protocol's own deadlines judge liveness, and TCP closes dead sockets.
    connectionMonitor: { abortConnectionOnPingFailure: false },
    connectionManager: {
      maxConnections: options.maxConnections,
      maxIncomingPendingConnections: options.maxIncomingPendingConnections,
      inboundConnectionThreshold: options.inboundConnectionsPerSecond,
      maxParallelDials: options.maxParallelDials,
      dialTimeout: options.dialTimeoutMs,
      allow: options.allowAddresses,
      deny: options.denyAddresses,
    },
    peerStore: { maxAddressAge: options.peerAddressTtlMs },
    ...(options.metrics === undefined ? {} : { metrics: options.metrics as Libp2pOptions['metrics'] }),
    ...(options.componentLogger === undefined ? {} : { logger: options.componentLogger }),
    peerDiscovery,
    services: { ...services, ...extraServices } as ServiceFactoryMap<MeshServices & T>,
  }
}

interface DiscoveryComponents extends MulticastDNSComponents {
  connectionManager: ConnectionManager
}

/**
 * libp2p only records discovered peers in the peer store; it no longer dials them. Peers found by
 * mDNS are on our LAN and are the mesh, so we connect to each one we are not yet connected to,
 * while below half the connection limit (the rest is left for peers that dial us).
 */
function dialingDiscoveredPeers(
  factory: (components: MulticastDNSComponents) => PeerDiscovery,
  dialTimeoutMs: number,
): (components: DiscoveryComponents) => PeerDiscovery {
  return (components) => {
    const discovery = factory(components)
    const { connectionManager } = components
    discovery.addEventListener('peer', (event) => {
      const peer = event.detail.id
      const connections = connectionManager.getConnections()
      if (connections.some((connection) => connection.remotePeer.equals(peer))) return
      if (connections.length >= connectionManager.getMaxConnections() / 2) return
      const limit = deadline(dialTimeoutMs)
      connectionManager
        .openConnection(peer, { signal: limit.signal })
        .catch(() => {})
        .finally(() => limit.clear())
    })
    return discovery
  }
}

class MeshNodeImpl<T extends ServiceMap> implements MeshNode<T> {
  readonly libp2p: Libp2p<MeshServices & T>
  readonly options: ResolvedMeshNodeOptions
  readonly nodeId: string
  readonly peerId: PeerId
  private readonly gate: MeshGater
  private readonly datastore: FsDatastore | undefined
  private readonly log: Logger | undefined
  private readonly drops: RequestDrops = {}
  /** Aborted on stop, so that request handlers in flight give up. */
  private lifetime = new AbortController()

  constructor(
    libp2p: Libp2p<MeshServices & T>,
    options: ResolvedMeshNodeOptions,
    gate: MeshGater,
    datastore: FsDatastore | undefined,
  ) {
    this.libp2p = libp2p
    this.options = options
    this.gate = gate
    this.datastore = datastore
    this.nodeId = options.identity.nodeId
    this.peerId = libp2p.peerId
    this.log = options.logger?.child({ component: 'libp2p' })
  }

  async start(): Promise<void> {
    if (this.libp2p.status === 'started' || this.libp2p.status === 'starting') return
    this.lifetime = new AbortController()
    try {
      if (this.options.dataDir !== undefined && this.datastore !== undefined) {
        await ensureDataDir(this.options.dataDir)
        await mkdir(this.datastore.path, { recursive: true, mode: 0o700 })
        await this.datastore.open()
      }
      await this.libp2p.start()
    } catch (err) {
      await this.stop().catch(() => {})
      throw new NodeStartError(`node ${this.nodeId} could not start: ${(err as Error).message}`, {
        cause: err,
        details: { listen: this.options.listen },
        hint: 'check that the listen ports are free (or use port 0) and the data dir is writable',
      })
    }
    this.log?.info(
      { nodeId: this.nodeId, addrs: this.multiaddrs().map(String), localOnly: this.options.localOnly },
      'libp2p node started',
    )
  }

  async stop(): Promise<void> {
    this.lifetime.abort()
    if (this.libp2p.status !== 'stopped') await this.libp2p.stop()
    await this.datastore?.close()
  }

  multiaddrs(): Multiaddr[] {
    const suffix = `/p2p/${this.nodeId}`
    return this.libp2p
      .getMultiaddrs()
      .map((addr) => (addr.toString().endsWith(suffix) ? addr : addr.encapsulate(suffix)))
  }

  async dialProtocol(peer: PeerTarget, protocol: string, options: DialProtocolOptions = {}): Promise<Stream> {
    const timeoutMs = options.timeoutMs ?? DEFAULT_PROTOCOL_TIMEOUT_MS
    const limit = deadline(timeoutMs, options.signal)
    try {
      return await this.libp2p.dialProtocol(toDialTarget(peer), protocol, {
        signal: limit.signal,
        runOnLimitedConnection: options.runOnLimitedConnection ?? false,
      })
    } catch (err) {
      throw dialFailure(
        err,
        limit.timedOut(),
        `open ${protocol} to ${describePeer(peer)}`,
        timeoutMs,
        options.signal,
      )
    } finally {
      limit.clear()
    }
  }

  async ping(peer: PeerTarget, options: DialProtocolOptions = {}): Promise<number> {
    const timeoutMs = options.timeoutMs ?? DEFAULT_PROTOCOL_TIMEOUT_MS
    const limit = deadline(timeoutMs, options.signal)
    try {
      // The ping spec allows one outbound ping stream per peer, and the DHT and the connection
      // monitor ping too: wait for the slot rather than fail.
      for (;;) {
        try {
          return await this.libp2p.services.ping.ping(toDialTarget(peer), {
            signal: limit.signal,
            runOnLimitedConnection: options.runOnLimitedConnection ?? false,
          })
        } catch (err) {
          if ((err as Error).name !== 'TooManyOutboundProtocolStreamsError') throw err
          await sleep(PING_SLOT_RETRY_MS, limit.signal)
        }
      }
    } catch (err) {
      throw dialFailure(err, limit.timedOut(), `ping ${describePeer(peer)}`, timeoutMs, options.signal)
    } finally {
      limit.clear()
    }
  }

  async request(
    peer: PeerTarget,
    protocol: string,
    payload: Uint8Array,
    options: RequestOptions = {},
  ): Promise<Uint8Array> {
    const timeoutMs = options.timeoutMs ?? DEFAULT_PROTOCOL_TIMEOUT_MS
    const limit = deadline(timeoutMs, options.signal)
    const what = `${protocol} request to ${describePeer(peer)}`
    let stream: Stream | undefined
    try {
      stream = await this.libp2p.dialProtocol(toDialTarget(peer), protocol, {
        signal: limit.signal,
        runOnLimitedConnection: options.runOnLimitedConnection ?? false,
      })
      await writeFrame(stream, payload, {
        signal: limit.signal,
        maxFrameBytes: options.maxRequestBytes ?? DEFAULT_MAX_FRAME_BYTES,
      })
      await stream.close({ signal: limit.signal })
      const frames = frameStream(stream, {
        maxFrameBytes: options.maxResponseBytes ?? DEFAULT_MAX_FRAME_BYTES,
      })
      const response = await frames.read({ signal: limit.signal })
      if (response === undefined)
        throw new StreamEndedError(`${describePeer(peer)} closed ${protocol} without a reply`)
      return response
    } catch (err) {
      stream?.abort(err as Error)
      if (isMeshErrorNamed(err, 'FrameTooLargeError') || isMeshErrorNamed(err, 'StreamEndedError')) throw err
      throw dialFailure(err, limit.timedOut(), what, timeoutMs, options.signal)
    } finally {
      limit.clear()
    }
  }

  async handleRequests(
    protocol: string,
    handler: RequestHandler,
    options: HandleRequestsOptions = {},
  ): Promise<void> {
    const timeoutMs = options.timeoutMs ?? DEFAULT_PROTOCOL_TIMEOUT_MS
    const maxRequestBytes = options.maxRequestBytes ?? DEFAULT_MAX_FRAME_BYTES
    const maxResponseBytes = options.maxResponseBytes ?? DEFAULT_MAX_FRAME_BYTES
    await this.libp2p.handle(
      protocol,
      async (stream, connection) => {
        const limit = deadline(timeoutMs, this.lifetime.signal)
        try {
          const frames = frameStream(stream, { maxFrameBytes: maxRequestBytes })
          const request = await frames.read({ signal: limit.signal })
          frames.unwrap()
          if (request === undefined) throw new StreamEndedError(`${protocol} stream closed before a request`)
          const response = await handler(request, {
            peerId: connection.remotePeer,
            nodeId: connection.remotePeer.toString(),
            connection,
            signal: limit.signal,
          })
          await writeFrame(stream, response, { signal: limit.signal, maxFrameBytes: maxResponseBytes })
          await stream.close({ signal: limit.signal })
        } catch (err) {
          const name = limit.timedOut() ? 'TimeoutError' : ((err as Error).name ?? 'Error')
          this.drops[name] = (this.drops[name] ?? 0) + 1
          this.log?.debug(
            { protocol, peer: connection.remotePeer.toString(), err: (err as Error).message, name },
            'request dropped',
          )
          stream.abort(err as Error)
        } finally {
          limit.clear()
        }
      },
      {
        maxInboundStreams: options.maxInboundStreams ?? 32,
        runOnLimitedConnection: options.runOnLimitedConnection ?? false,
      },
    )
  }

  async findPeer(
    peer: string | PeerId,
    options: AbortOptions & { timeoutMs?: number } = {},
  ): Promise<PeerInfo> {
    const timeoutMs = options.timeoutMs ?? DEFAULT_PROTOCOL_TIMEOUT_MS
    const limit = deadline(timeoutMs, options.signal)
    try {
      return await this.libp2p.peerRouting.findPeer(toPeerId(peer), { signal: limit.signal })
    } catch (err) {
      throw dialFailure(err, limit.timedOut(), `find ${describePeer(peer)}`, timeoutMs, options.signal)
    } finally {
      limit.clear()
    }
  }

  async denyPeer(peer: string | PeerId, options: AbortOptions = {}): Promise<void> {
    const peerId = toPeerId(peer)
    this.gate.deny(peerId)
    await this.libp2p.hangUp(peerId, options)
  }

  undenyPeer(peer: string | PeerId): void {
    this.gate.undeny(toPeerId(peer))
  }

  connectivity(): ConnectivityStatus {
    return this.libp2p.services.connectivity.status()
  }

  requestDrops(): RequestDrops {
    return { ...this.drops }
  }
}

function toPeerId(peer: string | PeerId): PeerId {
  return typeof peer === 'string' ? peerIdFromString(peer) : peer
}

function toDialTarget(peer: PeerTarget): PeerId | Multiaddr | Multiaddr[] {
  if (typeof peer !== 'string') return peer
  return peer.startsWith('/') ? multiaddr(peer) : peerIdFromString(peer)
}

function peerIdOf(addr: Multiaddr): PeerId {
  return peerIdFromString(addr.getComponents().findLast((component) => component.name === 'p2p')?.value ?? '')
}

function describePeer(peer: PeerTarget): string {
  return Array.isArray(peer) ? peer.map(String).join(', ') : peer.toString()
}

function isMeshErrorNamed(err: unknown, name: string): boolean {
  return err instanceof Error && err.name === name
}

/** Turns a libp2p failure into a PeerTimeoutError or DialError; the caller's own abort passes through. */
function dialFailure(
  err: unknown,
  timedOut: boolean,
  what: string,
  timeoutMs: number,
  signal?: AbortSignal,
): Error {
  if (timedOut) {
    return new PeerTimeoutError(`could not ${what} within ${timeoutMs} ms`, {
      cause: err,
      hint: 'check that the peer is online and reachable (firewall, NAT, relay); see docs/p2p-configuration.md',
    })
  }
  if (signal?.aborted === true) return err as Error
  const cause = err as Error
  return new DialError(`could not ${what}: ${cause.message}`, {
    cause,
    details: { error: cause.name },
    hint: cause.name === 'UnsupportedProtocolError' ? 'the peer does not run this protocol' : undefined,
  })
}
