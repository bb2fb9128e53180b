import { upnpNat } from '@achingbrain/nat-port-mapper'
import { noise } from '@chainsafe/libp2p-noise'
import { bootstrap } from '@libp2p/bootstrap'
import { circuitRelayServer, circuitRelayTransport } from '@libp2p/circuit-relay-v2'
import { dcutr } from '@libp2p/dcutr'
import { identify, identifyPush } from '@libp2p/identify'
import type { PeerDiscovery, ServiceMap } from '@libp2p/interface'
import type { ConnectionManager } from '@libp2p/interface-internal'
import { kadDHT } from '@libp2p/kad-dht'
import { mdns } from '@libp2p/mdns'
import { ping } from '@libp2p/ping'
import { preSharedKey } from '@libp2p/pnet'
import { tcp } from '@libp2p/tcp'
import { uPnPNAT } from '@libp2p/upnp-nat'
import { isLoopback } from '@libp2p/utils'
import { webSockets } from '@libp2p/websockets'
import { yamux } from '@libp2p/yamux'
import type { Multiaddr } from '@multiformats/multiaddr'
import type { Libp2pOptions, ServiceFactoryMap } from 'libp2p'
import pkg from '../../package.json' with { type: 'json' }
import { autoNATWithDialBack } from './autonat-dialback.ts'
import { connectivity } from './connectivity.ts'
import { deadline } from './deadline.ts'
import { DEFAULT_MAINTENANCE_MAX_BACKOFF_MS } from './defaults.ts'
import { dhtAddressMapper, type MeshGater } from './gater.ts'
import { httpPeerDiscovery } from './http-discovery.ts'
import type { MeshServices } from './mesh-node-types.ts'
import { natMonitor, upnpRecorder } from './nat-monitor.ts'
import type { ResolvedMeshNodeOptions } from './options.ts'

export function libp2pConfig<T extends ServiceMap>(
  options: ResolvedMeshNodeOptions,
  gate: MeshGater,
  extraServices: ServiceFactoryMap<T>,
): Libp2pOptions<MeshServices & T> {
  // UPnP's client is wrapped so that `mesh doctor` can tell what it found and mapped.
  const upnp = options.upnp ? upnpRecorder(upnpNat({ description: 'meshnet' })) : undefined
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
      mapObservedIp: !options.upnp,
    }),
    natMonitor: natMonitor({ upnp }),
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
  if (options.autoNAT) services.autoNAT = autoNATWithDialBack()
  if (options.dcutr) services.dcutr = dcutr()
  // The router's own mapping is trusted at once (as go-libp2p does): AutoNAT checks an address only
  // when a new connection opens, which a small mesh may not see for minutes after the mapping.
  if (upnp)
    services.upnp = uPnPNAT({
      portMappingDescription: 'meshnet',
      portMappingClient: upnp.client,
      autoConfirmAddress: true,
    })
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
  for (const init of options.httpDiscovery) {
    peerDiscovery.push(dialingDiscoveredPeers(httpPeerDiscovery(init), options.dialTimeoutMs))
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
    // It pings only to measure each connection's round trip (the dashboard shows it): every 30 s,
    // not libp2p's 10 s, which was a third of all streams opened while a ring of 16 formed.
    connectionMonitor: { abortConnectionOnPingFailure: false, pingInterval: 30_000 },
    connectionManager: {
      maxConnections: options.maxConnections,
      maxIncomingPendingConnections: options.maxIncomingPendingConnections,
      inboundConnectionThreshold: options.inboundConnectionsPerSecond,
      maxParallelDials: options.maxParallelDials,
      dialTimeout: options.dialTimeoutMs,
      // libp2p gives each address of a peer 6 s of the dial's budget, so that one that never
      // answers leaves time for the next. On loopback every address answers, and 16 agents starting
      // on two cores take 3-6 s (at worst 11 s) per handshake: at 6 s more than half of the
      // handshakes were abandoned half done (the peer's end of each waiting out its own 10 s), then
      // redone.
      ...(options.localOnly ? { addressDialTimeout: options.dialTimeoutMs } : {}),
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

/**
 * libp2p only records discovered peers in the peer store; it no longer dials them. Peers found by
 * mDNS (and by the HTTP endpoints the node was given) are the mesh, so we connect to each one we
 * are not yet connected to, while below half the connection limit (the rest is left for peers that
 * dial us).
 */
function dialingDiscoveredPeers<C extends object>(
  factory: (components: C) => PeerDiscovery,
  dialTimeoutMs: number,
): (components: C & { connectionManager: ConnectionManager }) => PeerDiscovery {
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
