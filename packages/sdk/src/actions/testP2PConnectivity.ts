import { collectDiagnosis } from '@meshnet/discovery'
import { multiaddr } from '@multiformats/multiaddr'
import type { SDKClient } from '../client.ts'
import type { DataLimitExceededError, NotConnectedError } from '../errors.ts'
import { lastPeerId, routingTableSize } from '../internal/helpers.ts'
import { deadline, natType, requireSession } from '../internal/session.ts'
import type { ConnectivityTestResult } from '../types.ts'

export type TestP2PConnectivityParameters = { signal?: AbortSignal }
export type TestP2PConnectivityReturnType = ConnectivityTestResult
export type TestP2PConnectivityErrorType = NotConnectedError | DataLimitExceededError

/**
 * Checks the network from here: each bootstrap node (dial and ping), discovery (a DHT lookup of
 * the peers closest to us, mDNS and custom modules' finds), NAT status from AutoNAT, and the
 * diagnosis `mesh doctor` gives (NAT type, relays, each peer's link and round trip, advice).
 */
export async function testP2PConnectivity(
  client: SDKClient,
  options: { signal?: AbortSignal } = {},
): Promise<ConnectivityTestResult> {
  const session = requireSession(client, 'testP2PConnectivity()')
  const { node } = session
  const p2p = client.config.p2pConfig
  const bootstrapNodes = await Promise.all(
    p2p.bootstrapNodes.map(async (address) => {
      try {
        const latencyMs = await node.ping(multiaddr(address), {
          timeoutMs: p2p.dialTimeout,
          ...(options.signal ? { signal: options.signal } : {}),
        })
        return { address, reachable: true, latencyMs }
      } catch (err) {
        return { address, reachable: false, error: (err as Error).message }
      }
    }),
  )
  const dht = node.libp2p.services.dht
  const dhtResult = { enabled: dht !== undefined, routingTableSize: routingTableSize(dht), closestPeers: 0 }
  let dhtError: string | undefined
  if (dht !== undefined) {
    const limit = deadline(client, p2p.discoveryOptions.timeout, options.signal)
    try {
      for await (const event of dht.getClosestPeers(session.identity.peerId.toMultihash().bytes, {
        signal: limit.signal,
      })) {
        if (event.name === 'FINAL_PEER') dhtResult.closestPeers++
      }
    } catch (err) {
      dhtError = (err as Error).message
    } finally {
      limit.clear()
    }
  }
  const bootstrapIds = new Set(p2p.bootstrapNodes.map(lastPeerId))
  const known = await node.libp2p.peerStore.all()
  const discovered = known.filter((peer) => !bootstrapIds.has(peer.id.toString())).length
  const nat = node.connectivity()
  const diagnosis = await collectDiagnosis(node, {
    pingTimeoutMs: p2p.dialTimeout,
    ...(options.signal ? { signal: options.signal } : {}),
  })
  return {
    bootstrap: bootstrapNodes.length === 0 || bootstrapNodes.some((b) => b.reachable),
    bootstrapNodes,
    discovery: dhtResult.closestPeers > 0 || discovered > 0,
    discoveryDetails: {
      dht: { ...dhtResult, ...(dhtError ? { error: dhtError } : {}) },
      mdns: { enabled: node.options.mdns },
      discoveredPeers: discovered,
      knownPeers: known.length,
    },
    natType: natType(client, session),
    nat: { ...nat, addresses: node.multiaddrs().map(String) },
    diagnosis,
  }
}
