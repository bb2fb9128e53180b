import type { Connection } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import { modelProviderKey, poolRendezvousKey } from '@meshnet/protocols'
import { multiaddr } from '@multiformats/multiaddr'
import type { SDKClient } from '../client.ts'
import { type DataLimitExceededError, NoNodesFoundError, type NotConnectedError } from '../errors.ts'
import { merge, withPeerId } from '../internal/helpers.ts'
import { deadline, exchange, requireSession } from '../internal/session.ts'
import { requestRingStatus } from '../pool.ts'
import { type DiscoveredNode, type DiscoverNodesOptions, NO_MODEL, type Session } from '../types.ts'

export type DiscoverNodesParameters = DiscoverNodesOptions
export type DiscoverNodesReturnType = DiscoveredNode[]
export type DiscoverNodesErrorType = NotConnectedError | NoNodesFoundError | DataLimitExceededError

/**
 * Nodes that can run jobs for `model`: public nodes from the model's DHT provider records, and the
 * members of the SDK's pool ring (asked of a connected member over `/meshnet/pool-ring/1.0.0`).
 * Emits `nodes:discovered`.
 */
export async function discoverNodes(
  client: SDKClient,
  options: DiscoverNodesParameters = {},
): Promise<DiscoverNodesReturnType> {
  return discover(client, requireSession(client, 'discoverNodes()'), options, 'always')
}

export async function discover(
  client: SDKClient,
  session: Session,
  options: DiscoverNodesOptions,
  announce: 'always' | 'changed',
): Promise<DiscoveredNode[]> {
  const { discoveryOptions, enableDHT } = client.config.p2pConfig
  const poolId = options.poolId ?? session.pool?.poolId
  const cacheKey = `${options.model ?? NO_MODEL}\u0000${poolId ?? ''}`
  const cached = session.discovered.get(cacheKey)
  const fresh = cached !== undefined && Date.now() - cached.at < discoveryOptions.interval
  if (fresh && options.forceRefresh !== true && !discoveryOptions.forceRefresh) return cached.nodes
  if (options.model === undefined && poolId === undefined) {
    throw new NoNodesFoundError('discoverNodes() needs a model (public nodes are found by it) or a pool', {
      hint: 'pass { model: "<file name or sha256>" }, or give the SDK a dataDir holding a pool certificate',
    })
  }
  const found = new Map<string, DiscoveredNode>()
  const limit = deadline(client, discoveryOptions.timeout, options.signal)
  try {
    await Promise.all([
      enableDHT && options.model !== undefined
        ? fromProviderRecords(client, session, options.model, found, limit.signal)
        : undefined,
      poolId === undefined
        ? undefined
        : fromPool(client, session, poolId, options.model, found, limit.signal),
    ])
  } finally {
    limit.clear()
  }
  options.signal?.throwIfAborted()
  const connected = new Set(session.node.libp2p.getPeers().map(String))
  const nodes = [...found.values()]
    .map((node) => ({ ...node, connected: connected.has(node.nodeId) }))
    .sort((a, b) => Number(b.connected) - Number(a.connected))
    .slice(0, discoveryOptions.maxPeers)
  session.discovered.set(cacheKey, { at: Date.now(), nodes })
  client.debug('sdk', 'debug', `discovered ${nodes.length} nodes for ${options.model ?? `pool ${poolId}`}`)
  const ids = (list: DiscoveredNode[]) =>
    list
      .map((n) => n.nodeId)
      .sort()
      .join()
  if (announce === 'always' || cached === undefined || ids(cached.nodes) !== ids(nodes)) {
    client.emit('nodes:discovered', { model: options.model, nodes })
  }
  return nodes
}

export async function fromProviderRecords(
  client: SDKClient,
  session: Session,
  model: string,
  found: Map<string, DiscoveredNode>,
  signal: AbortSignal,
): Promise<void> {
  const { node } = session
  const self = session.identity.nodeId
  try {
    for await (const provider of node.libp2p.contentRouting.findProviders(await modelProviderKey(model), {
      signal,
    })) {
      const nodeId = provider.id.toString()
      if (nodeId === self) continue
      let addrs = provider.multiaddrs
      if (addrs.length === 0) {
        addrs = await node.libp2p.peerStore
          .get(provider.id)
          .then((peer) => peer.addresses.map((a) => a.multiaddr))
          .catch(() => [])
      }
      merge(found, {
        nodeId,
        addresses: addrs.map((addr) => withPeerId(addr, nodeId)),
        sources: ['dht'],
        public: true,
        pools: [],
        connected: false,
      })
      if (found.size >= client.config.p2pConfig.discoveryOptions.maxPeers) break
    }
  } catch (err) {
    if (!signal.aborted)
      client.debug('sdk', 'info', `DHT lookup of ${model} ended: ${(err as Error).message}`)
  }
}

export async function fromPool(
  client: SDKClient,
  session: Session,
  poolId: string,
  model: string | undefined,
  found: Map<string, DiscoveredNode>,
  signal: AbortSignal,
): Promise<void> {
  const members = await poolMembers(client, session, poolId, signal)
  for (const member of members) {
    merge(found, {
      nodeId: member,
      addresses: [],
      sources: ['pool'],
      public: false,
      pools: [poolId],
      connected: true,
    })
  }
  for (const member of members.slice(0, 3)) {
    try {
      const status = await requestRingStatus(session.node, peerIdFromString(member), poolId, {
        signal,
        timeoutMs: client.config.p2pConfig.requestTimeout,
      })
      if (
        model !== undefined &&
        status.model !== null &&
        model !== status.model.name &&
        model !== status.model.sha256
      ) {
        client.debug('pool', 'info', `pool ${poolId} serves ${status.model.name}, not ${model}`)
        for (const m of members) found.delete(m)
        return
      }
      for (const ringMember of status.members) {
        if (ringMember.nodeId === session.identity.nodeId) continue
        merge(found, {
          nodeId: ringMember.nodeId,
          addresses: ringMember.addresses.map((a) => withPeerId(multiaddr(a), ringMember.nodeId)),
          sources: ['pool'],
          public: false,
          pools: [poolId],
          ...(status.model ? { model: status.model } : {}),
          connected: false,
        })
      }
      return
    } catch (err) {
      if (signal.aborted) return
      client.debug('pool', 'info', `ring status from ${member} failed: ${(err as Error).message}`)
    }
  }
}

/**
 * Connected peers that proved membership of `poolId` (exchanging certificates with those not yet
 * asked); when there are none, the pool's DHT rendezvous providers are dialed and asked.
 */
export async function poolMembers(
  client: SDKClient,
  session: Session,
  poolId: string,
  signal: AbortSignal,
): Promise<string[]> {
  const { node, gate } = session
  if (gate === undefined) return []
  const members = new Set<string>()
  const check = async (connections: Connection[]) => {
    await Promise.all(
      connections.map(async (connection) => {
        const proved = await exchange(client, session, connection)
        if (proved.includes(poolId) || gate.isMember(connection.remotePeer, poolId)) {
          members.add(connection.remotePeer.toString())
        }
      }),
    )
  }
  await check(node.libp2p.getConnections())
  if (members.size > 0 || !client.config.p2pConfig.enableDHT) return [...members]
  try {
    for await (const provider of node.libp2p.contentRouting.findProviders(await poolRendezvousKey(poolId), {
      signal,
    })) {
      if (provider.id.equals(session.identity.peerId)) continue
      const connection = await node.libp2p
        .dial(
          provider.multiaddrs.length > 0
            ? provider.multiaddrs.map((a) => multiaddr(withPeerId(a, provider.id.toString())))
            : provider.id,
          { signal },
        )
        .catch(() => undefined)
      if (connection) await check([connection])
      if (members.size > 0) break
    }
  } catch (err) {
    if (!signal.aborted)
      client.debug('pool', 'info', `pool rendezvous lookup ended: ${(err as Error).message}`)
  }
  return [...members]
}

export async function jobCandidates(
  client: SDKClient,
  session: Session,
  options: {
    model: string | undefined
    poolId: string | undefined
    nodeId: string | undefined
    signal: AbortSignal | undefined
  },
): Promise<DiscoveredNode[]> {
  if (options.nodeId !== undefined) {
    const known = [...session.discovered.values()]
      .flatMap((entry) => entry.nodes)
      .find((n) => n.nodeId === options.nodeId)
    return [
      known ?? {
        nodeId: options.nodeId,
        addresses: [],
        sources: [],
        public: false,
        pools: options.poolId ? [options.poolId] : [],
        connected: false,
      },
    ]
  }
  if (options.poolId !== undefined) {
    const nodes = await discoverNodes(client, {
      poolId: options.poolId,
      ...(options.signal ? { signal: options.signal } : {}),
    })
    const members = nodes.filter((n) => n.sources.includes('pool'))
    if (members.length > 0) return members
    throw new NoNodesFoundError(`no member of pool ${options.poolId} could be reached`, {
      hint: 'check that pool members are online and that a bootstrap node or mDNS leads to them',
    })
  }
  if (options.model === undefined) {
    throw new NoNodesFoundError('a public job needs a model: public nodes are found by the model they serve')
  }
  const nodes = await discoverNodes(client, {
    model: options.model,
    ...(options.signal ? { signal: options.signal } : {}),
  })
  const open = nodes.filter((n) => n.public)
  if (open.length > 0) return open
  throw new NoNodesFoundError(`no public node serving ${options.model} was found in the DHT`, {
    hint: 'public nodes run mesh start --public --model <file>; check the bootstrap nodes and the model name or hash',
  })
}
