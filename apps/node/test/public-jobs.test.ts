import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createMeshNode, type MeshNode } from '@meshnet/discovery'
import { generateIdentity } from '@meshnet/identity'
import { JobFailedError, type JobResult, modelProviderKey, requestJob } from '@meshnet/protocols'
import {
  type AgentProcess,
  agentRequest,
  createModel,
  runMesh,
  startAgentProcess,
} from '@meshnet/test-harness'
import { multiaddr } from '@multiformats/multiaddr'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

// One `mesh start --public` agent on loopback, and peers that are in no pool.

let root: string
let agent: AgentProcess
let addrs: ReturnType<typeof multiaddr>[]
let nodeId: string
const strangers: MeshNode[] = []

const stranger = async () => {
  const node = await createMeshNode({
    identity: generateIdentity(),
    localOnly: true,
    listen: ['/ip4/127.0.0.1/tcp/0'],
    websockets: false,
    dhtMode: 'client',
    bootstrap: addrs.map((a) => `${a.toString()}`),
  })
  strangers.push(node)
  return node
}

const run = async (node: MeshNode): Promise<JobResult | JobFailedError> => {
  const job = requestJob(node, addrs, { prompt: 'Hello', maxTokens: 3 })
  try {
    for (let step = await job.next(); ; step = await job.next()) if (step.done) return step.value
  } catch (err) {
    if (err instanceof JobFailedError) return err
    throw err
  }
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'meshnet-public-'))
  const model = join(root, 'tiny.gguf')
  await createModel(model, { layers: 2, embd: 64, heads: 2, vocab: 300 })
  const config = join(root, 'public.yaml')
  await writeFile(config, 'public: true\npublicJobsPerMinute: 2\n')
  agent = await startAgentProcess(join(root, 'node'), [
    '--local-only',
    '--no-beacons',
    '--model',
    model,
    '--config',
    config,
  ])
  const status = await agentRequest<{ nodeId: string }>(join(root, 'node'), '/status')
  nodeId = status.nodeId
  const info = await runMesh(['info', '--json', '--data-dir', join(root, 'node')])
  expect(info.code, info.stderr).toBe(0)
  addrs = (JSON.parse(info.stdout) as { addresses: string[] }).addresses
    .filter((a) => a.includes('/tcp/') && !a.includes('/ws'))
    .map((a) => multiaddr(a))
}, 60_000)

afterAll(async () => {
  await Promise.all(strangers.map((n) => n.stop()))
  await agent?.stop()
  await rm(root, { recursive: true, force: true })
})

describe('a public node (mesh start --public)', () => {
  it('runs jobs for peers in no pool, at most publicJobsPerMinute per peer, and counts the refusals', async () => {
    const a = await stranger()
    const first = await run(a)
    const second = await run(a)
    const third = await run(a)
    expect(first).toMatchObject({ mode: 'single', stopReason: 'maxTokens' })
    expect((first as JobResult).tokens).toHaveLength(3)
    expect((second as JobResult).tokens).toEqual((first as JobResult).tokens)
    expect(third).toBeInstanceOf(JobFailedError)
    expect((third as JobFailedError).code).toBe('ERR_RATE_LIMITED')
    // The limit is per peer: another peer still gets its jobs.
    const b = await stranger()
    expect(await run(b)).toMatchObject({ tokens: (first as JobResult).tokens })
    const status = await agentRequest<{ jobs: { refusedPublic: number; jobs: number } }>(
      join(root, 'node'),
      '/status',
    )
    expect(status.jobs).toMatchObject({ refusedPublic: 1, jobs: 3 })
  }, 60_000)

  it('is found through its DHT provider records, by model file name', async () => {
    const c = await stranger()
    const key = await modelProviderKey('tiny.gguf')
    let found: string[] = []
    for (let attempt = 0; attempt < 50 && !found.includes(nodeId); attempt++) {
      found = []
      try {
        for await (const provider of c.libp2p.contentRouting.findProviders(key, {
          signal: AbortSignal.timeout(2_000),
        }))
          found.push(provider.id.toString())
      } catch {}
      if (!found.includes(nodeId)) await new Promise((r) => setTimeout(r, 200))
    }
    expect(found).toContain(nodeId)
  }, 60_000)
})
