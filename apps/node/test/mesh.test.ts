import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import {
  type AgentProcess,
  agentRequest,
  beaconPort,
  createModel,
  eventually,
  runMesh,
  startAgentProcess,
} from '@meshnet/test-harness'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { converged, poolOf, readTopology, startRelay } from './mesh-fixture.ts'

let root: string
let port: string
const agents: AgentProcess[] = []
const stops: Array<() => Promise<void>> = []
beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'meshnet-mesh-'))
  port = beaconPort()
})
afterEach(async () => {
  await Promise.all(agents.splice(0).map((a) => a.stop()))
  await Promise.all(stops.splice(0).map((stop) => stop()))
  await rm(root, { recursive: true, force: true })
})

const fast = ['--beacon-interval', '300']

describe('three agents on loopback (separate processes)', () => {
  it('find each other, converge on one ring and plan, and re-converge without a killed member', async () => {
    const model = join(root, 'model.gguf')
    await createModel(model, { layers: 6, embd: 128, heads: 4, vocab: 300 })
    const withModel = [...fast, '--model', model]
    const { pool, admin, dir } = await poolOf(root, ['A', 'B', 'C'], port, withModel)
    agents.push(admin)
    agents.push(await startAgentProcess(dir('B'), ['--local-only', '--beacon-port', port, ...withModel]))
    const c = await startAgentProcess(dir('C'), ['--local-only', '--beacon-port', port, ...withModel])
    agents.push(c)

    const views = await converged([dir('A'), dir('B'), dir('C')], pool.poolId, 3)
    const topologies = await eventually('topology files at the agreed epoch', async () => {
      const files = await Promise.all(['A', 'B', 'C'].map((n) => readTopology(dir(n), pool.poolId)))
      return files.every((f) => f.epoch === views[0]!.epoch && f.converged) ? files : undefined
    })
    const strip = (t: (typeof topologies)[number]) => ({ ...t, updatedAt: undefined })
    expect(strip(topologies[1]!)).toEqual(strip(topologies[0]!))
    expect(strip(topologies[2]!)).toEqual(strip(topologies[0]!))
    const shards = topologies[0]!.members.map((m) => m.shard?.layers)
    expect(shards).toEqual([
      [0, 2],
      [2, 4],
      [4, 6],
    ])

    await c.kill() // SIGKILL: no goodbye
    const after = await converged([dir('A'), dir('B')], pool.poolId, 2)
    expect(after[0]!.epoch).toBeGreaterThan(views[0]!.epoch)
    expect(after[0]!.members.map((m) => m.shard?.layers)).toEqual([
      [0, 3],
      [3, 6],
    ])
    const file = await eventually('a two-member topology file', async () => {
      const t = await readTopology(dir('A'), pool.poolId)
      return t.members.length === 2 ? t : undefined
    })
    expect(file.epoch).toBe(after[0]!.epoch)

    const json = JSON.parse(
      (await runMesh(['ring-status', '--json', '--pool-id', pool.poolId, '--data-dir', dir('A')])).stdout,
    )
    expect(json).toMatchObject({ poolId: pool.poolId, epoch: after[0]!.epoch, converged: true })
    expect(json.members).toHaveLength(2)
    // When A joined its ring, and when it saw the ring of two agree (after C was dropped).
    expect(json.joinedAt).toBeLessThan(json.convergedAt)
    expect(json.convergedAt).toBeLessThanOrEqual(Date.now())
    const peers = JSON.parse(
      (await runMesh(['pool-peers', '--json', '--pool-id', pool.poolId, '--data-dir', dir('A')])).stdout,
    )
    expect(peers.peers.find((p: { online: boolean }) => !p.online)).toBeDefined()
  })
})

describe('discovery without LAN beacons or mDNS', () => {
  it('finds pool members through a mesh-relay bootstrap and the DHT, including one reachable only through the relay', async () => {
    const relay = await startRelay(join(root, 'relay'))
    stops.push(relay.stop)
    const { pool, admin, dir } = await poolOf(root, ['A', 'B', 'C'], port)
    await admin.stop() // the pool exists; from here on no beacons at all
    const viaRelay = ['--local-only', '--no-beacons', '--bootstrap', relay.address]
    agents.push(await startAgentProcess(dir('A'), viaRelay))
    agents.push(await startAgentProcess(dir('B'), viaRelay))
    // C has no socket of its own: it listens only on a circuit through the relay.
    agents.push(
      await startAgentProcess(dir('C'), [...viaRelay, '--listen', '/p2p-circuit', '--relay', relay.address]),
    )
    const views = await converged([dir('A'), dir('B'), dir('C')], pool.poolId, 3, 60_000)
    const c = views[2]!.members.find((m) => m.addresses.some((a) => a.includes('/p2p-circuit')))
    expect(c, 'C announces only its relay address').toBeDefined()
    const status = await agentRequest<{ libp2p: { discovery: { beaconDials: number } } }>(dir('A'), '/status')
    expect(status.libp2p.discovery.beaconDials).toBe(0)
  })
})
