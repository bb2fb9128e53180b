import { readFile } from 'node:fs/promises'
import { dataDirLayout, writeFileAtomic } from '@meshnet/identity'
import type { RingView } from './membership.ts'
import type { PipelineShard, Range, TensorShard } from './plan.ts'

/** `ring_topology_<pool-id>.json`, rewritten atomically on every new epoch. */
export interface RingTopology {
  poolId: string
  epoch: number
  digest: string
  converged: boolean
  updatedAt: string
  members: Array<{
    nodeId: string
    /** The libp2p PeerId; the same string as the node id. */
    peerId: string
    addresses: string[]
    position: number
    capacityBytes: number
    shard?: { layers?: Range; heads?: Range; kvHeads?: Range; ffn?: Range }
  }>
}

/** Builds the topology document for a view and (optionally) a shard plan. */
export function topologyOf(
  poolId: string,
  view: RingView,
  plan: ReadonlyArray<PipelineShard | TensorShard> = [],
  now = new Date(),
): RingTopology {
  const shards = new Map(plan.map((shard) => [shard.nodeId, shard]))
  return {
    poolId,
    epoch: view.epoch,
    digest: view.digest,
    converged: view.converged,
    updatedAt: now.toISOString(),
    members: view.members.map((member, position) => {
      const shard = shards.get(member.nodeId)
      const { nodeId: _, ...ranges } = shard ?? { nodeId: '' }
      return {
        nodeId: member.nodeId,
        peerId: member.nodeId,
        addresses: member.addresses,
        position,
        capacityBytes: member.capabilities.capacityBytes,
        ...(shard ? { shard: ranges } : {}),
      }
    }),
  }
}

export async function writeTopologyFile(dataDir: string, topology: RingTopology): Promise<string> {
  const path = dataDirLayout(dataDir).ringTopology(topology.poolId)
  await writeFileAtomic(path, `${JSON.stringify(topology, null, 2)}\n`)
  return path
}

export async function readTopologyFile(dataDir: string, poolId: string): Promise<RingTopology | undefined> {
  try {
    return JSON.parse(await readFile(dataDirLayout(dataDir).ringTopology(poolId), 'utf8')) as RingTopology
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw err
  }
}
