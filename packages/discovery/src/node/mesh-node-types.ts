import type { CircuitRelayService } from '@libp2p/circuit-relay-v2'
import type { Identify, IdentifyPush } from '@libp2p/identify'
import type {
  AbortOptions,
  Connection,
  Libp2p,
  PeerId,
  PeerInfo,
  ServiceMap,
  Stream,
} from '@libp2p/interface'
import type { KadDHT } from '@libp2p/kad-dht'
import type { Ping } from '@libp2p/ping'
import type { UPnPNAT } from '@libp2p/upnp-nat'
import type { Multiaddr } from '@multiformats/multiaddr'
import type { Connectivity, ConnectivityStatus } from './connectivity.ts'
import type { NatMonitor } from './nat-monitor.ts'
import type { ResolvedMeshNodeOptions } from './options.ts'

/** The services every mesh node has; the optional ones depend on the options. */
export interface MeshServices extends ServiceMap {
  identify: Identify
  identifyPush: IdentifyPush
  ping: Ping
  connectivity: Connectivity
  /** Observed addresses, address sources and UPnP results, for `collectDiagnosis`. */
  natMonitor: NatMonitor
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
