import { mkdir } from 'node:fs/promises'
import { setTimeout as sleep } from 'node:timers/promises'
import type { AbortOptions, Libp2p, PeerId, PeerInfo, ServiceMap, Stream } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import type { Logger } from '@meshnet/core'
import { dataDirLayout, ensureDataDir } from '@meshnet/identity'
import { DEFAULT_MAX_FRAME_BYTES, frameStream, StreamEndedError, writeFrame } from '@meshnet/protocols'
import { isMultiaddr, type Multiaddr, multiaddr } from '@multiformats/multiaddr'
import { FsDatastore } from 'datastore-fs'
import { createLibp2p, type ServiceFactoryMap } from 'libp2p'
import type { ConnectivityStatus } from './connectivity.ts'
import { deadline } from './deadline.ts'
import { DEFAULT_PROTOCOL_TIMEOUT_MS } from './defaults.ts'
import { DialError, NodeStartError, PeerTimeoutError } from './errors.ts'
import { type MeshGater, meshGater } from './gater.ts'
import { libp2pConfig } from './libp2p-config.ts'
import type {
  DialProtocolOptions,
  HandleRequestsOptions,
  MeshNode,
  MeshServices,
  PeerTarget,
  RequestDrops,
  RequestHandler,
  RequestOptions,
} from './mesh-node-types.ts'
import { type MeshNodeOptions, type ResolvedMeshNodeOptions, resolveMeshNodeOptions } from './options.ts'
import { WriteBehindDatastore } from './write-behind-datastore.ts'

/** Wait between attempts when another ping to the same peer holds the one ping stream. */
const PING_SLOT_RETRY_MS = 20

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
    options.dataDir === undefined
      ? undefined
      : new WriteBehindDatastore(
          new FsDatastore(dataDirLayout(options.dataDir).datastoreDir),
          options.logger?.child({ component: 'libp2p' }),
        )

  const libp2p = await createLibp2p<MeshServices & T>({
    ...libp2pConfig(options, gate, extraServices),
    ...(datastore === undefined ? {} : { datastore }),
    start: false,
  })
  const node = new MeshNodeImpl<T>(libp2p, options, gate, datastore)
  if (options.start) await node.start()
  return node
}

class MeshNodeImpl<T extends ServiceMap> implements MeshNode<T> {
  readonly libp2p: Libp2p<MeshServices & T>
  readonly options: ResolvedMeshNodeOptions
  readonly nodeId: string
  readonly peerId: PeerId
  private readonly gate: MeshGater
  private readonly datastore: WriteBehindDatastore | undefined
  private readonly log: Logger | undefined
  private readonly drops: RequestDrops = {}
  /** Aborted on stop, so that request handlers in flight give up. */
  private lifetime = new AbortController()

  constructor(
    libp2p: Libp2p<MeshServices & T>,
    options: ResolvedMeshNodeOptions,
    gate: MeshGater,
    datastore: WriteBehindDatastore | undefined,
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
      return await this.openStream(peer, protocol, limit.signal, options.runOnLimitedConnection ?? false)
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

  /**
   * A stream to `peer`. When relayed (limited) connections are all we have to it and the protocol
   * may run on one, the stream opens on that connection: libp2p itself would dial the peer again,
   * through the relay, for a second relayed connection (which the relay or the peer may drop).
   */
  private async openStream(
    peer: PeerTarget,
    protocol: string,
    signal: AbortSignal,
    runOnLimitedConnection: boolean,
  ): Promise<Stream> {
    if (runOnLimitedConnection) {
      const id = peerIdOfTarget(peer)
      const open = id === undefined ? [] : this.libp2p.getConnections(id).filter((c) => c.status === 'open')
      if (open.length > 0 && open.every((c) => c.limits !== undefined)) {
        return open[0]!.newStream(protocol, { signal, runOnLimitedConnection: true })
      }
    }
    return this.libp2p.dialProtocol(toDialTarget(peer), protocol, { signal, runOnLimitedConnection })
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
      stream = await this.openStream(peer, protocol, limit.signal, options.runOnLimitedConnection ?? false)
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

/** The node id a dial target names, if it names one. */
function peerIdOfTarget(peer: PeerTarget): PeerId | undefined {
  try {
    if (typeof peer === 'string')
      return peer.startsWith('/') ? peerIdOf(multiaddr(peer)) : peerIdFromString(peer)
    if (Array.isArray(peer)) return peer[0] === undefined ? undefined : peerIdOf(peer[0])
    return isMultiaddr(peer) ? peerIdOf(peer) : peer
  } catch {
    return undefined
  }
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
