import { isIPv4 } from 'node:net'
import type { Gateway, PortMapping } from '@achingbrain/nat-port-mapper'
import type {
  ComponentLogger,
  Connection,
  IdentifyResult,
  Libp2pEvents,
  Logger,
  Startable,
  TypedEventTarget,
} from '@libp2p/interface'
import type { AddressManager } from '@libp2p/interface-internal'
import type { UPnPNATClient } from '@libp2p/upnp-nat'
import type { AddressObservation, AddressRecord, UpnpStatus } from './doctor-types.ts'

/** Peers whose latest observation of our address is kept. */
const MAX_OBSERVERS = 64

export interface NatMonitorComponents {
  addressManager: AddressManager
  events: TypedEventTarget<Libp2pEvents>
  logger: ComponentLogger
}

export interface NatMonitorInit {
  /** What UPnP did, when the node runs it (see `upnpRecorder`). */
  upnp?: UpnpRecorder
}

/**
 * What `mesh doctor` needs from inside libp2p: our addresses with how each was learned, the address
 * each peer saw us at (identify's observed address) with our end of that connection, and UPnP.
 */
export interface NatMonitor {
  /** Our addresses as libp2p's address manager holds them: source and whether verified. */
  addresses(): AddressRecord[]
  /** The latest observed address each peer reported (at most 64 peers, newest kept). */
  observations(): AddressObservation[]
  upnp(): UpnpStatus
}

class NatMonitorService implements NatMonitor, Startable {
  readonly #components: NatMonitorComponents
  readonly #upnp: UpnpRecorder | undefined
  readonly #log: Logger
  readonly #seen = new Map<string, AddressObservation>()

  constructor(components: NatMonitorComponents, init: NatMonitorInit) {
    this.#components = components
    this.#upnp = init.upnp
    this.#log = components.logger.forComponent('meshnet:nat-monitor')
  }

  readonly [Symbol.toStringTag] = '@meshnet/nat-monitor'

  start(): void {
    this.#components.events.addEventListener('peer:identify', this.#onIdentify)
  }

  stop(): void {
    this.#components.events.removeEventListener('peer:identify', this.#onIdentify)
    this.#seen.clear()
  }

  addresses(): AddressRecord[] {
    return this.#components.addressManager.getAddressesWithMetadata().map((address) => ({
      address: address.multiaddr.toString(),
      source: address.type,
      verified: address.verified,
    }))
  }

  observations(): AddressObservation[] {
    return [...this.#seen.values()]
  }

  upnp(): UpnpStatus {
    return this.#upnp?.status() ?? disabledUpnp()
  }

  readonly #onIdentify = (event: CustomEvent<IdentifyResult>): void => {
    const { peerId, observedAddr, connection } = event.detail
    if (observedAddr === undefined) return
    const peer = peerId.toString()
    const local = localAddressOf(connection)
    this.#seen.delete(peer)
    this.#seen.set(peer, {
      peer,
      // The peer's view of the connection ends in our id; the address is what matters here.
      observed: observedAddr.toString().replace(/\/p2p\/[^/]+$/, ''),
      remote: connection.remoteAddr.toString(),
      ...(local === undefined ? {} : { local }),
      direction: connection.direction,
      at: Date.now(),
    })
    if (this.#seen.size > MAX_OBSERVERS) this.#seen.delete(this.#seen.keys().next().value as string)
    this.#log.trace('%s sees us at %s (our end %s)', peer, observedAddr, local ?? 'unknown')
  }
}

/**
 * Our end of a TCP connection, as `/ip4/<ip>/tcp/<port>`. libp2p's Connection does not expose it;
 * @libp2p/tcp keeps the socket on the connection's multiaddr connection, which this reads when the
 * installed versions have it there (a test pins it) and otherwise leaves unknown.
 */
function localAddressOf(connection: Connection): string | undefined {
  const socket = (
    connection as unknown as { maConn?: { socket?: { localAddress?: unknown; localPort?: unknown } } }
  ).maConn?.socket
  if (typeof socket?.localAddress !== 'string' || typeof socket.localPort !== 'number') return undefined
  const ip = socket.localAddress.replace(/^::ffff:/, '')
  return `/${isIPv4(ip) ? 'ip4' : 'ip6'}/${ip}/tcp/${socket.localPort}`
}

/** The NAT monitor, which `createMeshNode` adds as `services.natMonitor`. */
export function natMonitor(init: NatMonitorInit = {}): (components: NatMonitorComponents) => NatMonitor {
  return (components) => new NatMonitorService(components, init)
}

/** A UPnP port-mapping client that remembers what it found and did, for `NatMonitor.upnp()`. */
export interface UpnpRecorder {
  /** Give this to `uPnPNAT({ portMappingClient })`. */
  readonly client: UPnPNATClient
  status(): UpnpStatus
}

export function disabledUpnp(): UpnpStatus {
  return { enabled: false, searches: 0, gateways: [], externalIp: null, mappings: [], error: null }
}

/**
 * Wraps the UPnP client @libp2p/upnp-nat uses: it exposes nothing of what it found, so the gateways
 * the search yields, their external address and each port mapping (or why it failed) are recorded
 * on their way through.
 */
export function upnpRecorder(inner: UPnPNATClient): UpnpRecorder {
  const status: UpnpStatus = { ...disabledUpnp(), enabled: true }
  const failed = (what: string, err: unknown) => {
    status.error = `${what}: ${(err as Error).message}`
  }
  const wrap = (gateway: Gateway): Gateway => {
    const name = `${gateway.host}:${gateway.port} (${gateway.family})`
    if (!status.gateways.includes(name)) status.gateways.push(name)
    const record = (mapping: PortMapping) => {
      const protocol = mapping.protocol.toLowerCase() as 'tcp' | 'udp'
      const entry = {
        internal: `${mapping.internalHost}:${mapping.internalPort}`,
        external: `${mapping.externalHost}:${mapping.externalPort}`,
        protocol,
      }
      status.mappings = [
        ...status.mappings.filter((m) => m.internal !== entry.internal || m.protocol !== protocol),
        entry,
      ]
      return mapping
    }
    return {
      get id() {
        return gateway.id
      },
      get host() {
        return gateway.host
      },
      get port() {
        return gateway.port
      },
      get family() {
        return gateway.family
      },
      stop: (options) => gateway.stop(options),
      async map(internalPort, internalHost, options) {
        try {
          return record(await gateway.map(internalPort, internalHost, options))
        } catch (err) {
          failed(`mapping port ${internalPort} on gateway ${name}`, err)
          throw err
        }
      },
      async *mapAll(internalPort, options) {
        for await (const mapping of gateway.mapAll(internalPort, options)) yield record(mapping)
      },
      unmap: (internalPort, options) => gateway.unmap(internalPort, options),
      async externalIp(options) {
        try {
          status.externalIp = await gateway.externalIp(options)
          return status.externalIp
        } catch (err) {
          failed(`asking gateway ${name} for its external address`, err)
          throw err
        }
      },
    }
  }
  const client: UPnPNATClient = {
    async *findGateways(options) {
      status.searches++
      try {
        for await (const gateway of inner.findGateways(options)) yield wrap(gateway)
      } catch (err) {
        if (options?.signal?.aborted !== true) failed('searching for a UPnP gateway', err)
        throw err
      }
    },
    async getGateway(descriptor, options) {
      try {
        return wrap(await inner.getGateway(descriptor, options))
      } catch (err) {
        failed(`fetching the UPnP gateway descriptor ${descriptor}`, err)
        throw err
      }
    },
  }
  return {
    client,
    status: () => ({
      ...status,
      gateways: [...status.gateways],
      mappings: status.mappings.map((m) => ({ ...m })),
    }),
  }
}
