import { IpNet } from '@chainsafe/netmask'
import type { ConnectionGater, MultiaddrConnection, PeerId, PeerInfo } from '@libp2p/interface'
import { isLoopback, isPrivate, tryGetNetConfig } from '@libp2p/utils'
import type { Multiaddr } from '@multiformats/multiaddr'

/** Which addresses of a peer we store, dial and hand out through the DHT. */
export type AddressScope = 'loopback' | 'routable' | 'public' | 'private' | 'all'

/**
 * True when `addr` belongs to `scope`. Addresses without an IP (DNS names, bare `/p2p-circuit`)
 * count as public, except under `loopback`, which admits nothing that could leave the machine.
 */
export function inAddressScope(addr: Multiaddr, scope: AddressScope): boolean {
  if (scope === 'all') return true
  if (scope === 'loopback') return isLoopback(addr)
  const ip = ipOf(addr)
  if (ip === undefined) return scope !== 'private'
  if (isLoopback(addr)) return false
  const privateAddr = isPrivate(addr)
  if (scope === 'public') return !privateAddr
  if (scope === 'private') return privateAddr
  return true
}

/** A kad-dht `peerInfoMapper` that keeps only the addresses in `scope`. */
export function dhtAddressMapper(scope: AddressScope): (peer: PeerInfo) => PeerInfo {
  return (peer) => ({ ...peer, multiaddrs: peer.multiaddrs.filter((addr) => inAddressScope(addr, scope)) })
}

export interface MeshGaterInit {
  /** Only these peers may connect (either direction); undefined admits everyone not denied. */
  allowPeers: PeerId[] | undefined
  denyPeers: PeerId[]
  /** IP networks (`/ip4/10.0.0.0/ipcidr/8`) we neither dial nor accept. */
  denyAddresses: string[]
  /** `loopback` in localOnly mode: nothing else is stored, dialed or accepted. */
  scope: 'loopback' | 'all'
}

/** The connection gater plus the mutable lists behind it. */
export interface MeshGater {
  gater: ConnectionGater
  deny(peer: PeerId): void
  undeny(peer: PeerId): void
  isDenied(peer: PeerId): boolean
}

/**
 * Allow and deny lists, applied at every gate libp2p offers: before a dial, after the noise
 * handshake (when the remote's key is proven), to relay reservations and relayed connections.
 */
export function meshGater(init: MeshGaterInit): MeshGater {
  const denied = new Set(init.denyPeers.map(String))
  const allowed = init.allowPeers === undefined ? undefined : new Set(init.allowPeers.map(String))
  const deniedNets = init.denyAddresses.map(toIpNet)

  const refusesPeer = (peer: PeerId): boolean => {
    const id = peer.toString()
    return denied.has(id) || (allowed !== undefined && !allowed.has(id))
  }
  const refusesAddress = (addr: Multiaddr): boolean => {
    if (init.scope === 'loopback' && !isLoopback(addr)) return true
    const ip = ipOf(addr)
    return ip !== undefined && deniedNets.some((net) => net.contains(ip))
  }
  const refusesConnection = (peer: PeerId, conn: MultiaddrConnection): boolean =>
    refusesPeer(peer) || refusesAddress(conn.remoteAddr)

  const gater: ConnectionGater = {
    denyDialPeer: refusesPeer,
    denyDialMultiaddr: refusesAddress,
    denyInboundConnection: (conn) => refusesAddress(conn.remoteAddr),
    denyOutboundConnection: refusesConnection,
    denyInboundEncryptedConnection: refusesConnection,
    denyOutboundEncryptedConnection: refusesConnection,
    denyInboundUpgradedConnection: refusesConnection,
    denyOutboundUpgradedConnection: refusesConnection,
    denyInboundRelayReservation: refusesPeer,
    denyOutboundRelayedConnection: (source, destination) => refusesPeer(source) || refusesPeer(destination),
    denyInboundRelayedConnection: (relay, remote) => refusesPeer(relay) || refusesPeer(remote),
    filterMultiaddrForPeer: (_peer, addr) => !refusesAddress(addr),
  }
  return {
    gater,
    deny: (peer) => {
      denied.add(peer.toString())
    },
    undeny: (peer) => {
      denied.delete(peer.toString())
    },
    isDenied: refusesPeer,
  }
}

function ipOf(addr: Multiaddr): string | undefined {
  const config = tryGetNetConfig(addr)
  return config?.type === 'ip4' || config?.type === 'ip6' ? config.host : undefined
}

function toIpNet(addr: string): IpNet {
  const [, family, host, , bits] = addr.split('/')
  return new IpNet(host ?? '', Number(bits ?? (family === 'ip6' ? 128 : 32)))
}
