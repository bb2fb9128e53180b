import { peerIdFromString } from '@libp2p/peer-id'
import { PERF_PROTOCOL, type Perf, type PerfResult } from '@meshnet/discovery'
import type { SDKClient } from '../client.ts'
import type { DataLimitExceededError, NotConnectedError } from '../errors.ts'
import { mean } from '../internal/helpers.ts'
import { deadline, pingPeer, requireSession } from '../internal/session.ts'
import type { NetworkPerformanceOptions, NetworkPerformanceResult, PeerPerformance } from '../types.ts'

export type TestNetworkPerformanceParameters = NetworkPerformanceOptions
export type TestNetworkPerformanceReturnType = NetworkPerformanceResult
export type TestNetworkPerformanceErrorType = NotConnectedError | DataLimitExceededError

/**
 * Latency (libp2p ping) and throughput (`/perf/1.0.0`) to peers. Bandwidth needs the peer to run
 * the perf service; a peer that does not is reported with the reason, not with made-up figures.
 */
export async function testNetworkPerformance(
  client: SDKClient,
  options: NetworkPerformanceOptions = {},
): Promise<NetworkPerformanceResult> {
  const session = requireSession(client, 'testNetworkPerformance()')
  const { node } = session
  const p2p = client.config.p2pConfig
  const pings = options.pings ?? 5
  const bytes = options.bytes ?? 1024 * 1024
  const targets = options.peers ?? [...new Set(node.libp2p.getPeers().map(String))].slice(0, 8)
  const peers: PeerPerformance[] = []
  for (const nodeId of targets) {
    options.signal?.throwIfAborted()
    const peerId = peerIdFromString(nodeId)
    const errors: string[] = []
    const samples: number[] = []
    let failures = 0
    for (let i = 0; i < pings; i++) {
      try {
        samples.push(await pingPeer(client, session, peerId, p2p.dialTimeout, options.signal))
      } catch (err) {
        failures++
        errors.push(`ping: ${(err as Error).message}`)
        if (failures > 1) break
      }
    }
    let bandwidth: PerfResult | undefined
    if (bytes > 0) {
      const protocols = await node.libp2p.peerStore
        .get(peerId)
        .then((peer) => peer.protocols)
        .catch(() => [] as string[])
      if (!protocols.includes(PERF_PROTOCOL)) {
        errors.push(`bandwidth: the peer does not run ${PERF_PROTOCOL}`)
      } else {
        const limit = deadline(client, p2p.requestTimeout, options.signal)
        try {
          bandwidth = await (node.libp2p.services as unknown as { perf: Perf }).perf.measure(peerId, {
            uploadBytes: bytes,
            downloadBytes: bytes,
            signal: limit.signal,
          })
        } catch (err) {
          errors.push(`bandwidth: ${(err as Error).message}`)
        } finally {
          limit.clear()
        }
      }
    }
    peers.push({
      nodeId,
      latency:
        samples.length === 0
          ? undefined
          : {
              samples: samples.length,
              failures,
              minMs: Math.min(...samples),
              avgMs: mean(samples),
              maxMs: Math.max(...samples),
            },
      bandwidth,
      errors,
    })
  }
  const latencies = peers.flatMap((p) => (p.latency ? [p.latency.avgMs] : []))
  const measured = peers.flatMap((p) => (p.bandwidth ? [p.bandwidth] : []))
  return {
    avgLatency: latencies.length === 0 ? undefined : mean(latencies),
    bandwidth:
      measured.length === 0
        ? undefined
        : {
            uploadBitsPerSecond: Math.round(mean(measured.map((m) => m.uploadBitsPerSecond))),
            downloadBitsPerSecond: Math.round(mean(measured.map((m) => m.downloadBitsPerSecond))),
          },
    peers,
  }
}
