import { mkdtemp, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, beforeEach, expect, it } from 'vitest'
import type { RingView } from '../src/membership.ts'
import { planPipeline } from '../src/plan.ts'
import { readTopologyFile, topologyOf, writeTopologyFile } from '../src/topology.ts'

let dir: string
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'meshnet-topology-'))
})
afterEach(async () => {
  await rm(dir, { recursive: true, force: true })
})

it('writes the agreed ring with positions and shard ranges, atomically', async () => {
  const member = (nodeId: string) => ({
    nodeId,
    addresses: [`/ip4/127.0.0.1/tcp/1/p2p/${nodeId}`],
    capabilities: { capacityBytes: 2 ** 30, freeMemoryBytes: 0, computeScore: 1, engines: [], models: [] },
    lastSeen: 0,
    view: { epoch: 3, digest: 'd' },
  })
  const view: RingView = { epoch: 3, digest: 'd', converged: true, members: [member('A'), member('B')] }
  const plan = planPipeline(
    view.members.map((m) => ({ nodeId: m.nodeId, capacityBytes: m.capabilities.capacityBytes })),
    { layers: 4, heads: 4, kvHeads: 4, ff: 64, bytesPerLayer: 1 },
  )
  const path = await writeTopologyFile(dir, topologyOf('p1', view, plan, new Date(0)))
  expect(path).toBe(join(dir, 'ring_topology_p1.json'))
  expect(await readdir(dir)).toEqual(['ring_topology_p1.json'])
  expect(await readTopologyFile(dir, 'p1')).toEqual({
    poolId: 'p1',
    epoch: 3,
    digest: 'd',
    converged: true,
    updatedAt: '1970-01-01T00:00:00.000Z',
    members: [
      {
        nodeId: 'A',
        peerId: 'A',
        addresses: ['/ip4/127.0.0.1/tcp/1/p2p/A'],
        position: 0,
        capacityBytes: 2 ** 30,
        shard: { layers: [0, 2] },
      },
      {
        nodeId: 'B',
        peerId: 'B',
        addresses: ['/ip4/127.0.0.1/tcp/1/p2p/B'],
        position: 1,
        capacityBytes: 2 ** 30,
        shard: { layers: [2, 4] },
      },
    ],
  })
  expect(await readTopologyFile(dir, 'none')).toBeUndefined()
})
