import { mkdtemp, readFile, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createLogger } from '@meshnet/core'
import { INITIAL_TRUST } from '@meshnet/store'
import {
  type AgentProcess,
  agentRequest,
  beaconPort,
  createModel,
  eventually,
  runMesh,
  startAgentProcess,
  startRangeServer,
} from '@meshnet/test-harness'
import { buildManifest, chunksFor, type Manifest, ModelStore, type PieceSelection } from '@meshnet/weights'
import { afterAll, afterEach, describe, expect, it } from 'vitest'
import { startAgent } from '../src/agent/agent.ts'
import { meshPart } from '../src/agent/mesh-part.ts'
import { weightsPart } from '../src/agent/weights-part.ts'
import { DEMO_MODEL } from '../src/commands/demo.ts'
import type { NodeConfig } from '../src/config.ts'
import { converged, llamaCppTokens, poolOf, type RingStatus, ringStatus } from './mesh-fixture.ts'

// Weights over the mesh with `mesh start` processes on loopback: only A holds the model file; the
// other members start with its model id and fetch exactly the chunks of the shard the ring gives
// them from whoever holds them, each chunk checked against the manifest before it is written.

const PROMPT = 'The mesh splits the model'
const roots: string[] = []
const agents: AgentProcess[] = []
const cleanups: Array<() => Promise<unknown>> = []

afterEach(async () => {
  await Promise.all(agents.splice(0).map((a) => a.stop()))
  for (const cleanup of cleanups.splice(0)) await cleanup()
  for (const root of roots.splice(0)) await rm(root, { recursive: true, force: true })
})

afterAll(async () => {
  await Promise.all(agents.splice(0).map((a) => a.kill()))
})

interface WeightsStatus {
  weights: {
    model: { id: string; path: string } | null
    server: { bytesServed: number; directBytes: number; requests: number }
    fetch: {
      fetchedBytes: number
      badChunks: number
      dropped: Array<{ source: string; reason: string; trust?: number }>
    }
  }
  nodeId: string
}

const statusOf = (dataDir: string) => agentRequest<WeightsStatus>(dataDir, '/status')

/** What a member's shard is in `status` (its layers; the embedding when first, the head when last). */
function selectionOf(status: RingStatus, nodeId: string, layers: number): PieceSelection {
  const shard = status.members.find((m) => m.nodeId === nodeId)?.shard
  if (!shard) throw new Error(`${nodeId} has no shard in the plan`)
  return { layers: shard.layers, embed: shard.layers[0] === 0, head: shard.layers[1] === layers }
}

const bytesOf = (model: Manifest, chunks: Iterable<number>) =>
  [...chunks].reduce((n, i) => n + model.chunks.length[i]!, 0)

async function ready(dataDir: string, poolId: string, members: number): Promise<RingStatus> {
  return eventually(
    `a ready ring of ${members}`,
    async () => {
      const status = await ringStatus(dataDir, poolId)
      return status.ready && status.members.length === members ? status : undefined
    },
    120_000,
  )
}

async function infer(
  dataDir: string,
  ...args: string[]
): Promise<{ tokens: number[]; mode: string; stats: { members: string[] } }> {
  const result = await runMesh([
    'inference',
    '--prompt',
    PROMPT,
    '--max-tokens',
    '8',
    '--json',
    '--data-dir',
    dataDir,
    ...args,
  ])
  expect(result.code, result.stdout + result.stderr).toBe(0)
  return JSON.parse(result.stdout)
}

/** A model file and the pool of `names` (A the admin), no agent running. */
async function setup(names: string[]) {
  const root = await mkdtemp(join(tmpdir(), 'meshnet-weights-'))
  roots.push(root)
  const model = join(root, 'model.gguf')
  await createModel(model, DEMO_MODEL)
  const port = beaconPort()
  const made = await poolOf(root, names, port, [])
  await made.admin.stop()
  const manifest = await buildManifest(model)
  const args = ['--local-only', '--beacon-port', port, '--beacon-interval', '300', '--threads', '1']
  return { root, model, manifest, poolId: made.pool.poolId, dir: made.dir, args }
}

describe('weights over the mesh', () => {
  it('members started with the model id fetch only their shards from the one that has the file, and only what they gain when a member leaves', async () => {
    const { model, manifest, poolId, dir, args } = await setup(['A', 'B', 'C'])
    const expected = await llamaCppTokens(model, PROMPT, 8)
    // B and C first: they wait for a member with the manifest, so the first plan is the ring of three.
    const b = await startAgentProcess(dir('B'), [...args, '--model', manifest.id])
    const c = await startAgentProcess(dir('C'), [...args, '--model', manifest.id])
    agents.push(b, c)
    await converged([dir('B'), dir('C')], poolId, 2, 60_000)
    const a = await startAgentProcess(dir('A'), [...args, '--model', model])
    agents.push(a)
    const planned = await ready(dir('A'), poolId, 3)
    const job = await infer(dir('B'))
    expect(job.mode).toBe('pipeline')
    expect(new Set(job.stats.members).size).toBe(3)
    expect(job.tokens).toEqual(expected)

    const fileBytes = (await stat(model)).size
    const [sa, sb, sc] = await Promise.all([statusOf(dir('A')), statusOf(dir('B')), statusOf(dir('C'))])
    const layers = DEMO_MODEL.layers
    for (const member of [sb, sc]) {
      // The sparse file takes only the blocks of the chunks fetched.
      const onDisk = (await stat(member.weights.model!.path)).blocks * 512
      expect(onDisk).toBeLessThan(0.6 * fileBytes)
      // Exactly the chunks of its shard: no more, no fewer.
      const wanted = chunksFor(manifest, selectionOf(planned, member.nodeId, layers))
      expect(member.weights.fetch.fetchedBytes).toBe(bytesOf(manifest, wanted))
    }
    // A served most of it; B and C may have passed each other the header.
    expect(sa.weights.server.bytesServed).toBeGreaterThan(
      0.9 * (sb.weights.fetch.fetchedBytes + sc.weights.fetch.fetchedBytes),
    )
    expect(sa.weights.fetch.fetchedBytes).toBe(0)
    // The bulk bytes went on direct connections (the members' connections are direct TCP ones).
    expect(sa.weights.server.directBytes).toBeGreaterThan(0.9 * sa.weights.server.bytesServed)

    // C leaves: B's range grows, and B fetches only the layers it gains.
    const before = new Set(chunksFor(manifest, selectionOf(planned, sb.nodeId, layers)))
    const fetchedBefore = sb.weights.fetch.fetchedBytes
    await c.stop()
    agents.splice(agents.indexOf(c), 1)
    const replanned = await ready(dir('A'), poolId, 2)
    const after = chunksFor(manifest, selectionOf(replanned, sb.nodeId, layers))
    const gained = after.filter((i) => !before.has(i))
    expect(gained.length).toBeGreaterThan(0)
    const sb2 = await statusOf(dir('B'))
    expect(sb2.weights.fetch.fetchedBytes - fetchedBefore).toBe(bytesOf(manifest, gained))
    expect((await infer(dir('A'), '--mode', 'pipeline')).tokens).toEqual(expected)
  }, 300_000)

  it('drops bytes that fail their hash, takes them from another member, and lowers the sender’s trust', async () => {
    const { model, manifest, poolId, dir, args } = await setup(['A', 'B', 'D'])
    const expected = await llamaCppTokens(model, PROMPT, 8)
    // D: a member whose weights server flips a bit in every chunk it sends, over the real protocol.
    const config: NodeConfig = {
      networkId: 'meshnet',
      name: 'bit-flipper',
      model,
      localOnly: true,
      beacons: false,
      mdns: false,
      dht: false,
    }
    let flipped = 0
    let mesh: ReturnType<typeof meshPart> | undefined
    const double = await startAgent({
      dataDir: dir('D'),
      config,
      logger: createLogger({ app: 'agent', level: 'warn', stderr: { write: () => true } }),
      parts: (context) => {
        mesh = meshPart(context, undefined)
        const weights = weightsPart(context, mesh, {
          readChunk: async (stored, index) => {
            const bytes = await weights.store().readChunk(stored, index)
            if (bytes !== undefined) {
              bytes[bytes.length >> 1]! ^= 0x04
              flipped++
            }
            return bytes
          },
        })
        return [mesh, weights]
      },
    })
    cleanups.push(() => double.stop())
    const doubleAddress = mesh!.node().multiaddrs()[0]!.toString()
    const b = await startAgentProcess(dir('B'), [
      ...args,
      '--model',
      manifest.id,
      '--bootstrap',
      doubleAddress,
    ])
    agents.push(b)
    const a = await startAgentProcess(dir('A'), [...args, '--model', model])
    agents.push(a)
    await ready(dir('A'), poolId, 2)
    const job = await infer(dir('A'), '--mode', 'pipeline')
    expect(job.tokens).toEqual(expected)
    expect(new Set(job.stats.members).size).toBe(2)

    const sb = await statusOf(dir('B'))
    expect(flipped).toBeGreaterThan(0)
    expect(sb.weights.fetch.badChunks).toBeGreaterThan(0)
    const drop = sb.weights.fetch.dropped.find((d) => d.source === double.identity.nodeId)
    expect(drop?.reason).toBe('bad-bytes')
    // The trust B keeps of D fell below where every peer starts.
    expect(drop?.trust).toBeLessThan(INITIAL_TRUST)
  }, 300_000)

  it('fetches only its ranges from a URL, resumes after kill -9 without fetching a chunk twice, then a second member fetches from the first and the URL together', async () => {
    const { model, poolId, dir, args } = await setup(['A', 'B'])
    const http = await startRangeServer(model)
    cleanups.push(() => http.close())
    const added = await runMesh(['model-add', http.url, '--json', '--data-dir', dir('A')])
    expect(added.code, added.stderr).toBe(0)
    const id = (JSON.parse(added.stdout) as { id: string }).id
    const manifest = await buildManifest(model)
    expect(id).toBe(manifest.id)

    // A fetches layers 0–3 and the embedding from the URL, slowly, and is killed half way.
    const wanted = chunksFor(manifest, { layers: [0, 4], embed: true, head: false })
    const wantedBytes = bytesOf(manifest, wanted)
    http.throttle(8 * 2 ** 20)
    let a = await startAgentProcess(dir('A'), args)
    agents.push(a)
    const pull = ['model-pull', id, '--layers', '0-3', '--embed', '--json', '--data-dir', dir('A')]
    const first = runMesh(pull)
    await eventually('A to fetch part of its layers', async () => {
      const status = await statusOf(dir('A'))
      return status.weights.fetch.fetchedBytes > wantedBytes / 3 || undefined
    })
    await a.kill()
    agents.splice(agents.indexOf(a), 1)
    await first
    const store = ModelStore.open(join(dir('A'), 'models'))
    const heldBefore = store.held(id)
    store.close()
    const before = wanted.filter((i) => heldBefore[i] === 1)
    expect(before.length).toBeGreaterThan(0)
    expect(before.length).toBeLessThan(wanted.length)

    // Restarted, the same pull asks the URL only for the chunks A did not have.
    http.throttle(0)
    const asked = http.ranges().length
    const served = http.bytesServed()
    a = await startAgentProcess(dir('A'), args)
    agents.push(a)
    const second = await runMesh(pull)
    expect(second.code, second.stdout + second.stderr).toBe(0)
    const missing = wanted.filter((i) => heldBefore[i] !== 1)
    expect(http.bytesServed() - served).toBe(bytesOf(manifest, missing))
    for (const [start, end] of http.ranges().slice(asked)) {
      for (const i of before) {
        const at = manifest.chunks.offset[i]!
        expect(end < at || start >= at + manifest.chunks.length[i]!, `chunk ${i} fetched again`).toBe(true)
      }
    }
    const listed = await runMesh(['model-ls', '--json', '--data-dir', dir('A')])
    const [summary] = (
      JSON.parse(listed.stdout) as { models: Array<{ heldBytes: number; fileBytes: number }> }
    ).models
    expect(summary!.heldBytes).toBe(wantedBytes)
    expect(summary!.heldBytes).toBeLessThan(0.6 * summary!.fileBytes)

    // B, given only the URL, finds the pool's manifest through A (by the header's hash) and fetches
    // the whole model from A and the URL at once.
    const b = await startAgentProcess(dir('B'), args)
    agents.push(b)
    await converged([dir('A'), dir('B')], poolId, 2, 60_000)
    const servedBefore = http.bytesServed()
    const pulled = await runMesh(['model-pull', http.url, '--json', '--data-dir', dir('B')])
    expect(pulled.code, pulled.stdout + pulled.stderr).toBe(0)
    const result = JSON.parse(pulled.stdout) as {
      model: string
      state: string
      sources: Record<string, number>
    }
    expect(result).toMatchObject({ model: id, state: 'done' })
    const { nodeId: aId } = await statusOf(dir('A'))
    expect(result.sources[aId]).toBeGreaterThan(0)
    expect(result.sources[http.url]).toBeGreaterThan(0)
    expect(http.bytesServed() - servedBefore).toBeLessThan(manifest.manifest.fileBytes)
    const check = ModelStore.open(join(dir('B'), 'models'))
    const copy = await check.get(id)
    expect(check.summary(copy!).complete).toBe(true)
    check.close()
    const bytes = await readFile(copy!.path)
    const original = await readFile(model)
    for (let i = 0; i < manifest.chunks.count; i++) {
      const at = manifest.chunks.offset[i]!
      const n = manifest.chunks.length[i]!
      expect(Buffer.compare(bytes.subarray(at, at + n), original.subarray(at, at + n)), `chunk ${i}`).toBe(0)
    }
  }, 300_000)
})
