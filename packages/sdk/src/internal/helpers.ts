import type { Connection, PeerId } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import { type Multiaddr, multiaddr } from '@multiformats/multiaddr'
import type { TrafficMetrics } from '../traffic.ts'
import type { ConnectionInfo, DiscoveredNode } from '../types.ts'

export function retryable(err: Error): boolean {
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

export function peerTarget(peer: DiscoveredNode): PeerId | Multiaddr[] {
  return peer.addresses.length > 0 ? peer.addresses.map((a) => multiaddr(a)) : peerIdFromString(peer.nodeId)
}

export function merge(found: Map<string, DiscoveredNode>, node: DiscoveredNode): void {
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

export function withPeerId(addr: Multiaddr, nodeId: string): string {
  const text = addr.toString()
  return text.endsWith(`/p2p/${nodeId}`) ? text : `${text}/p2p/${nodeId}`
}

export function lastPeerId(address: string): string {
  return address.split('/p2p/').at(-1) ?? ''
}

export function transportOf(addr: Multiaddr): 'tcp' | 'websocket' | 'other' {
  const text = addr.toString()
  if (text.includes('/p2p-circuit')) return 'other'
  if (/\/wss?(\/|$)/.test(text)) return 'websocket'
  return text.includes('/tcp/') ? 'tcp' : 'other'
}

export function connectionInfo(connection: Connection, traffic: TrafficMetrics | undefined): ConnectionInfo {
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
export function routingTableSize(dht: unknown): number {
  return (dht as { routingTable?: { size?: number } } | undefined)?.routingTable?.size ?? 0
}

export function mean(values: number[]): number {
  return values.reduce((sum, value) => sum + value, 0) / values.length
}

export function anySignal(...signals: Array<AbortSignal | undefined>): AbortSignal {
  return AbortSignal.any(signals.filter((s): s is AbortSignal => s !== undefined))
}

export function abortion(signal: AbortSignal): Promise<never> {
  return new Promise((_resolve, reject) => {
    if (signal.aborted) reject(signal.reason)
    signal.addEventListener('abort', () => reject(signal.reason), { once: true })
  })
}
