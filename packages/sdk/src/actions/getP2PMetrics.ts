import type { SDKClient } from '../client.ts'
import type { DataLimitExceededError, NotConnectedError } from '../errors.ts'
import { connectionInfo, routingTableSize } from '../internal/helpers.ts'
import { requireSession, updateRates } from '../internal/session.ts'
import type { P2PMetrics } from '../types.ts'

export type GetP2PMetricsReturnType = P2PMetrics
export type GetP2PMetricsErrorType = NotConnectedError | DataLimitExceededError

/** Snapshot of the node: connections, peers, bytes, protocols, DHT and NAT, from libp2p itself. */
export async function getP2PMetrics(client: SDKClient): Promise<P2PMetrics> {
  const session = requireSession(client, 'getP2PMetrics()')
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
  updateRates(client, session)
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
