import type { SDKClient } from '../client.ts'
import { lastPeerId, routingTableSize } from '../internal/helpers.ts'
import { natType } from '../internal/session.ts'
import type { HealthStatus, SystemHealthReport } from '../types.ts'

export type GetSystemHealthReportReturnType = SystemHealthReport
export type GetSystemHealthReportErrorType = never

/** Whether the SDK can do its job, and if not, why. Works before connect() too. */
export async function getSystemHealthReport(client: SDKClient): Promise<SystemHealthReport> {
  const session = client.session
  const base = { timestamp: Date.now(), mode: client.config.mode }
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
        bootstrap: { configured: client.config.p2pConfig.bootstrapNodes.length, connected: 0 },
        dht: { enabled: client.config.p2pConfig.enableDHT, routingTableSize: 0 },
        nat: 'unknown',
        dataLimit: undefined,
      },
      pool: undefined,
      jobs: { running: 0 },
    }
  }
  const { node, gate, pool } = session
  const peers = new Set(node.libp2p.getPeers().map(String))
  const bootstrapIds = client.config.p2pConfig.bootstrapNodes.map(lastPeerId)
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
    session.limit !== undefined || peers.size === 0 ? 'unhealthy' : issues.length > 0 ? 'degraded' : 'healthy'
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
      nat: natType(client, session),
      dataLimit: session.limit?.shortMessage,
    },
    pool: pool === undefined ? undefined : { ...pool, membersConnected },
    jobs: { running: session.jobs.size },
  }
}
