import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { JobToken } from '@meshnet/protocols'
import { createModel, eventually, runMesh } from '@meshnet/test-harness'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { FabstirSDK } from '../src/sdk.ts'
import type { StreamEndEvent } from '../src/types.ts'
import { type Agent, startAgent } from './agents.ts'

// End to end against real agents (`mesh start` child processes) on 127.0.0.1: a pool member that
// serves a generated GGUF to its pool, and a public node (`--public`) serving the same file to anyone.
// The SDK's data dir joined the pool with a client token through `mesh pool-join`, as an app would.

let root: string
let model: string
let poolId: string
let member: Agent
let open: Agent
let sha256: string
const sdks: FabstirSDK[] = []

const dir = (name: string) => join(root, name)
const mesh = async (args: string[]) => {
  const result = await runMesh(args)
  if (result.code !== 0) throw new Error(`mesh ${args[0]} failed: ${result.stderr}`)
  return result.stdout
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'meshnet-sdk-agents-'))
  model = join(root, 'tiny.gguf')
  await createModel(model, { layers: 2, embd: 256, heads: 4, kvHeads: 2, vocab: 1000, type: 'Q8_0', seed: 3 })
  const beaconPort = String(43_000 + Math.floor(Math.random() * 10_000))
  const pool = JSON.parse(
    await mesh(['pool-create', '--name', 'sdk-pool', '--json', '--data-dir', dir('member')]),
  ) as {
    poolId: string
  }
  poolId = pool.poolId
  const invite = JSON.parse(
    await mesh([
      'pool-invite',
      '--pool-id',
      poolId,
      '--role',
      'client',
      '--json',
      '--data-dir',
      dir('member'),
    ]),
  ) as { joinToken: string }
  member = await startAgent(dir('member'), [
    '--local-only',
    '--model',
    model,
    '--beacon-port',
    beaconPort,
    '--json',
  ])
  await mesh([
    'pool-join',
    '--token',
    invite.joinToken,
    '--local-only',
    '--beacon-port',
    beaconPort,
    '--timeout',
    '30',
    '--data-dir',
    dir('app'),
  ])
  open = await startAgent(dir('public'), [
    '--local-only',
    '--model',
    model,
    '--public',
    '--no-beacons',
    '--bootstrap',
    member.addresses[0]!,
    '--json',
  ])
  const status = await open.request<{ jobs: { model: { sha256: string } } }>('/status')
  sha256 = status.jobs.model.sha256
}, 120_000)

afterAll(async () => {
  await Promise.all(sdks.splice(0).map((sdk) => sdk.disconnect()))
  await Promise.all([member?.stop(), open?.stop()])
  await rm(root, { recursive: true, force: true })
})

const sdkOf = (config: Partial<ConstructorParameters<typeof FabstirSDK>[0]> & { bootstrap: string }) => {
  const { bootstrap, ...rest } = config
  const sdk = new FabstirSDK({
    mode: 'development',
    ...rest,
    p2pConfig: {
      localOnly: true,
      bootstrapNodes: [bootstrap],
      dialTimeout: 5_000,
      requestTimeout: 30_000,
      retryDelay: 200,
      ...rest.p2pConfig,
    },
  })
  sdks.push(sdk)
  return sdk
}

/** A public job straight to the open node, that would run for seconds. */
const longJob = () => ({
  target: 'public' as const,
  nodeId: open.nodeId,
  model: 'tiny.gguf',
  prompt: 'Once upon a time',
  maxTokens: 4_000,
  temperature: 0,
})

type AgentJobs = { jobs: Array<{ id: string; status: string }> }
const jobIds = async (agent: Agent) =>
  new Set((await agent.request<AgentJobs>('/jobs')).jobs.map((j) => j.id))
/** The jobs `agent` took since `before` (its ids then). */
const jobsSince = async (agent: Agent, before: Set<string>) =>
  (await agent.request<AgentJobs>('/jobs')).jobs.filter((j) => !before.has(j.id))
const noneRunningSince = async (agent: Agent, before: Set<string>) =>
  (await jobsSince(agent, before)).every((j) => j.status !== 'running' && j.status !== 'queued')

describe('FabstirSDK with real agents', () => {
  it('finds a public node by model name and hash and streams a completion from it', async () => {
    const sdk = sdkOf({ bootstrap: open.addresses[0]! })
    await sdk.connect()
    const byName = await eventually('the public node in the DHT', async () => {
      const nodes = await sdk.discoverNodes({ model: 'tiny.gguf', forceRefresh: true })
      return nodes.some((n) => n.nodeId === open.nodeId) ? nodes : undefined
    })
    expect(byName.find((n) => n.nodeId === open.nodeId)).toMatchObject({ public: true, sources: ['dht'] })
    expect(byName.some((n) => n.nodeId === member.nodeId)).toBe(false)
    const byHash = await sdk.discoverNodes({ model: sha256 })
    expect(byHash.map((n) => n.nodeId)).toContain(open.nodeId)

    const streamed: JobToken[] = []
    const events: JobToken[] = []
    const ends: StreamEndEvent[] = []
    sdk.on('stream:token', (event) => events.push(event.token))
    sdk.on('stream:end', (event) => ends.push(event))
    const stream = sdk.streamInference({
      model: 'tiny.gguf',
      prompt: 'Hello world',
      maxTokens: 12,
      temperature: 0,
    })
    for await (const token of stream) streamed.push(token)
    const result = await stream.result
    // A generation that ends inside a UTF-8 character adds one text-only piece (same index).
    const tokens = streamed.filter((t) => t.textOnly !== true)
    expect(tokens.map((t) => t.index)).toEqual([...Array(tokens.length).keys()])
    expect(tokens.length).toBeGreaterThan(0)
    expect(result.tokens).toEqual(tokens.map((t) => t.id))
    expect(result.text).toBe(streamed.map((t) => t.text).join(''))
    expect(result).toMatchObject({ mode: 'single', model: sha256 })
    expect(result.stats.members).toEqual([open.nodeId])
    expect(result.stats.completionTokens).toBe(tokens.length)
    expect(events).toEqual(streamed)
    expect(ends).toEqual([{ requestId: stream.requestId, result, cancelled: false }])

    // The same job through the agent's own CLI (`mesh inference`) gives the same tokens and text.
    const cli = await runMesh([
      'inference',
      '--prompt',
      'Hello world',
      '--max-tokens',
      '12',
      '--json',
      '--data-dir',
      dir('public'),
    ])
    expect(cli.code, cli.stderr).toBe(0)
    expect(JSON.parse(cli.stdout)).toMatchObject({ tokens: result.tokens, text: result.text })

    // Greedy decoding on the same model gives the same tokens again.
    const again = await sdk.submitJob({ model: sha256, prompt: 'Hello world', maxTokens: 12, temperature: 0 })
    expect(again.tokens).toEqual(result.tokens)

    const agentJob = await open.request<{ jobs: Array<{ id: string; status: string; tokens: number }> }>(
      '/jobs',
    )
    expect(agentJob.jobs.find((j) => j.id === result.jobId)).toMatchObject({
      status: 'completed',
      tokens: streamed.length,
    })
    const metrics = await sdk.getP2PMetrics()
    expect(metrics.protocols.traffic['/meshnet/job/1.0.0']?.received).toBeGreaterThan(0)
  }, 60_000)

  it('cancels a stream with an AbortSignal and the node stops the job', async () => {
    const sdk = sdkOf({ bootstrap: open.addresses[0]! })
    await sdk.connect()
    await eventually(
      'the public node in the DHT',
      async () => (await sdk.discoverNodes({ model: 'tiny.gguf', forceRefresh: true })).length > 0,
    )
    const controller = new AbortController()
    const ended = new Promise<StreamEndEvent>((resolve) => sdk.once('stream:end', resolve))
    const stream = sdk.streamInference({
      model: 'tiny.gguf',
      prompt: 'Once upon a time',
      maxTokens: 4_000,
      temperature: 0,
      signal: controller.signal,
    })
    const got: JobToken[] = []
    await expect(
      (async () => {
        for await (const token of stream) {
          got.push(token)
          if (got.length === 3) controller.abort()
        }
      })(),
    ).rejects.toMatchObject({ name: 'AbortError' })
    expect(got.length).toBeGreaterThanOrEqual(3)
    expect(got.length).toBeLessThan(4_000)
    expect(await ended).toMatchObject({
      cancelled: true,
      error: expect.objectContaining({ name: 'AbortError' }),
    })
    await eventually('the agent to record the job as cancelled', async () => {
      const { jobs } = await open.request<{ jobs: Array<{ status: string }> }>('/jobs')
      return jobs.some((j) => j.status === 'cancelled')
    })
  }, 60_000)

  it('ends the job on the agent within a second however soon its stream is aborted', async () => {
    const sdk = sdkOf({ bootstrap: open.addresses[0]! })
    await sdk.connect()
    const before = await jobIds(open)
    // The first milliseconds race the stream's opening on both sides: around 5 ms the request and
    // its reset reach the agent together. Each moment is a separate job.
    for (const ms of [5, 0, 1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 40, 5]) {
      const controller = new AbortController()
      const stream = sdk.streamInference({ ...longJob(), signal: controller.signal })
      setTimeout(() => controller.abort(), ms)
      await expect(stream.result).rejects.toMatchObject({ name: 'AbortError' })
      await eventually(
        `no job left running on the agent after an abort at ${ms} ms`,
        () => noneRunningSince(open, before),
        1_000,
        20,
      )
    }
    const jobs = await jobsSince(open, before)
    expect(jobs.length).toBeGreaterThan(0)
    expect(new Set(jobs.map((j) => j.status))).toEqual(new Set(['cancelled']))
  }, 60_000)

  it('ends the job on the agent within a second wherever maxReceivedData cuts its stream', async () => {
    const before = await jobIds(open)
    // connect() receives a few KiB and a whole job some 30 KiB more: each limit cuts a job at
    // another token.
    let cuts = 0
    for (let limit = 6 * 1024; limit <= 22 * 1024; limit += 2 * 1024) {
      const sdk = sdkOf({
        bootstrap: open.addresses[0]!,
        p2pConfig: { connectionManager: { autoDial: false, maxReceivedData: limit } },
      })
      await sdk.connect()
      let tokens = 0
      const stream = sdk.streamInference(longJob())
      await expect(
        (async () => {
          for await (const _ of stream) tokens++
        })(),
      ).rejects.toMatchObject({ name: 'DataLimitExceededError' })
      expect(tokens).toBeGreaterThan(0)
      cuts++
      await eventually(
        `no job left running on the agent after a cut at ${limit} bytes`,
        () => noneRunningSince(open, before),
        1_000,
        20,
      )
      await sdk.disconnect()
    }
    const jobs = await jobsSince(open, before)
    expect(jobs.map((j) => j.status)).toEqual(Array(cuts).fill('cancelled'))
  }, 90_000)

  it('runs a job on its pool with a client certificate, and is refused without one', async () => {
    const sdk = sdkOf({ bootstrap: member.addresses[0]!, dataDir: dir('app') })
    const connected = await sdk.connect()
    expect(connected.pool).toMatchObject({ poolId, role: 'client' })
    const nodes = await eventually('the pool ring', async () => {
      const list = await sdk.discoverNodes({ model: 'tiny.gguf', forceRefresh: true })
      return list.some((n) => n.nodeId === member.nodeId && n.sources.includes('pool')) ? list : undefined
    })
    expect(nodes.find((n) => n.nodeId === member.nodeId)).toMatchObject({
      pools: [poolId],
      model: { name: 'tiny.gguf', sha256 },
    })
    const result = await sdk.submitJob({ prompt: 'Hello world', maxTokens: 8, temperature: 0 })
    expect(result.stats.members).toEqual([member.nodeId])
    expect(result.tokens.length).toBeGreaterThan(0)
    const health = await sdk.getSystemHealthReport()
    expect(health.pool).toMatchObject({ poolId, role: 'client' })
    expect(health.pool?.membersConnected).toBe(1)

    const outsider = sdkOf({ bootstrap: member.addresses[0]! })
    await outsider.connect()
    await expect(
      outsider.submitJob({ poolId, nodeId: member.nodeId, prompt: 'Hello', maxTokens: 4 }),
    ).rejects.toMatchObject({ name: 'JobFailedError', code: 'ERR_POOL_ACCESS' })
    await expect(
      outsider.submitJob({
        target: 'public',
        model: 'tiny.gguf',
        nodeId: member.nodeId,
        prompt: 'Hello',
        maxTokens: 4,
      }),
    ).rejects.toMatchObject({
      name: 'JobFailedError',
      code: 'ERR_POOL_ACCESS',
    })
  }, 60_000)

  it('measures latency and throughput to an agent', async () => {
    const sdk = sdkOf({ bootstrap: open.addresses[0]! })
    await sdk.connect()
    const result = await sdk.testNetworkPerformance({ peers: [open.nodeId], pings: 3, bytes: 256 * 1024 })
    expect(result.peers[0]?.latency?.samples).toBe(3)
    expect(result.avgLatency).toBeGreaterThanOrEqual(0)
    // Agents serve /perf/1.0.0: 256 KiB each way, timed.
    const { bandwidth } = result.peers[0]!
    expect(bandwidth).toMatchObject({ uploadBytes: 256 * 1024, downloadBytes: 256 * 1024 })
    expect(bandwidth!.uploadBitsPerSecond).toBeGreaterThan(0)
    expect(bandwidth!.downloadBitsPerSecond).toBeGreaterThan(0)
  }, 60_000)
})
