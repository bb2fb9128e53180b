import { networkInterfaces } from 'node:os'
import type { ServiceMap } from '@libp2p/interface'
import { diagnose, endpoint } from './doctor.ts'
import type { AddressRecord, Diagnosis, PeerInput } from './doctor-types.ts'
import type { MeshNode } from './mesh-node-types.ts'

// `mesh doctor`'s collecting half: reads a running MeshNode (addresses, NAT monitor, relays,
// connections, pings) into the plain data `diagnose` judges.

export interface CollectDiagnosisOptions {
  signal?: AbortSignal
  /** Budget of each peer's ping. Default 3000 ms. */
  pingTimeoutMs?: number
  /** `false` measures nothing: RTTs come from libp2p's connection monitor when it has one. */
  ping?: boolean
  /** Ring and pool members this node should reach; those not connected are listed with link `none`. */
  members?: Iterable<string>
  /** At most this many peers are listed and pinged (members first). Default 64. */
  maxPeers?: number
}

export const DEFAULT_DOCTOR_PING_TIMEOUT_MS = 3_000
const DEFAULT_DOCTOR_MAX_PEERS = 64

/**
 * Diagnoses a running node: its addresses, NAT type, UPnP, relay reservations, and each connected
 * peer and known member with its link type and a round trip measured now (pings run in parallel,
 * each within `pingTimeoutMs`).
 */
export async function collectDiagnosis<T extends ServiceMap>(
  node: MeshNode<T>,
  options: CollectDiagnosisOptions = {},
): Promise<Diagnosis> {
  const pingTimeoutMs = options.pingTimeoutMs ?? DEFAULT_DOCTOR_PING_TIMEOUT_MS
  const maxPeers = options.maxPeers ?? DEFAULT_DOCTOR_MAX_PEERS
  const { libp2p } = node
  const monitor = libp2p.services.natMonitor
  const members = new Set(options.members ?? [])
  members.delete(node.nodeId)

  const open = new Map<string, Array<{ remote: string; limited: boolean; rtt: number | undefined }>>()
  for (const connection of libp2p.getConnections()) {
    if (connection.status !== 'open') continue
    const nodeId = connection.remotePeer.toString()
    open.set(nodeId, [
      ...(open.get(nodeId) ?? []),
      {
        remote: connection.remoteAddr.toString(),
        limited: connection.limits !== undefined || !connection.direct,
        rtt: connection.rtt,
      },
    ])
  }
  const connected = [...open.keys()].sort((a, b) => Number(members.has(b)) - Number(members.has(a)))
  const listed = [...connected, ...[...members].filter((id) => !open.has(id)).sort()].slice(0, maxPeers)

  const peers = await Promise.all(
    listed.map(async (nodeId): Promise<PeerInput> => {
      const connections = (open.get(nodeId) ?? []).map(({ remote, limited }) => ({ remote, limited }))
      const peer = { nodeId, connections, member: members.has(nodeId) }
      if (connections.length === 0) return { ...peer, rttMs: null, error: 'not connected' }
      if (options.ping === false) {
        const rtt = open.get(nodeId)?.find((c) => typeof c.rtt === 'number')?.rtt
        return { ...peer, rttMs: rtt ?? null, error: null }
      }
      try {
        const rttMs = await node.ping(nodeId, {
          timeoutMs: pingTimeoutMs,
          runOnLimitedConnection: true,
          ...(options.signal ? { signal: options.signal } : {}),
        })
        return { ...peer, rttMs, error: null }
      } catch (err) {
        if (options.signal?.aborted === true) throw err
        return { ...peer, rttMs: null, error: (err as Error).message }
      }
    }),
  )

  const addresses = monitor.addresses()
  const connectivity = node.connectivity()
  return diagnose({
    nodeId: node.nodeId,
    localOnly: node.options.localOnly,
    localIps: localIps(addresses),
    addresses,
    announced: node.multiaddrs().map(String),
    observations: monitor.observations(),
    autoNAT: libp2p.getProtocols().find((p) => p.includes('/autonat/')) ?? null,
    upnp: monitor.upnp(),
    relays: node.options.relays.map(
      (addr) => addr.getComponents().findLast((c) => c.name === 'p2p')?.value ?? addr.toString(),
    ),
    reservedRelays: connectivity.reservedRelays,
    publiclyReachable: connectivity.publiclyReachable,
    peers,
    pingTimeoutMs,
  })
}

/** This machine's IPs: every interface's, and the ones libp2p listens on. */
function localIps(addresses: AddressRecord[]): string[] {
  const ips = new Set<string>()
  for (const list of Object.values(networkInterfaces())) {
    for (const entry of list ?? []) ips.add(entry.address)
  }
  for (const a of addresses) {
    if (a.source !== 'transport') continue
    const at = endpoint(a.address)
    if (at !== undefined) ips.add(at.ip)
  }
  return [...ips]
}
