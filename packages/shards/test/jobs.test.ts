import { silentLogger } from '@meshnet/core'
import { createLlamaCppEngine, openModelTokenizer } from '@meshnet/llama-cpp'
import { encodeJobFrame, JOB_PROTOCOL, type JobResult, type JobToken, requestJob } from '@meshnet/protocols'
import type { RingMember } from '@meshnet/ring'
import { type MeshStore, openStore } from '@meshnet/store'
import { eventually, modelDir } from '@meshnet/test-harness'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  type JobService,
  type JobServiceInit,
  jobService,
  type ServedModel,
  type SingleEngine,
} from '../src/index.ts'
import { fileSha256 } from '../src/model-hash.ts'
import { readShardModelFacts } from '../src/plan.ts'
import { type TestMember, TestMesh, type TestPool } from './mesh.ts'

// The job service on real pieces: libp2p nodes on 127.0.0.1 with real pool certificates, a real
// mesh_state.db, generated models run by llama.cpp (single jobs) and by the Meshnet shard servers
// of the members (sharded jobs). Only the ring's view is given directly instead of by gossip.

const mesh = new TestMesh()
let models: Awaited<ReturnType<typeof modelDir>>
let served: ServedModel
let pool: TestPool
const started: Array<{ service: JobService; store: MeshStore }> = []

beforeAll(async () => {
  models = await modelDir()
  const path = await models.model('jobs-q8', {
    layers: 4,
    embd: 256,
    heads: 4,
    kvHeads: 2,
    ff: 512,
    vocab: 1000,
    type: 'Q8_0',
    seed: 3,
  })
  served = {
    path,
    info: { name: 'jobs-q8.gguf', sha256: await fileSha256(path), bytes: 0 },
    plan: await readShardModelFacts(path),
  }
  pool = await mesh.pool('jobs')
}, 120_000)

afterAll(async () => {
  for (const { service, store } of started.splice(0)) {
    await service.stop()
    store.close()
  }
  await mesh.cleanup()
  await models?.cleanup()
})

/** A member's ring entry: what its announcement would say. */
function ringEntry(member: TestMember, capacityBytes: number): RingMember {
  return {
    nodeId: member.nodeId,
    addresses: member.addrs,
    capabilities: {
      capacityBytes,
      freeMemoryBytes: capacityBytes,
      computeScore: 1,
      engines: ['meshnet', 'llama-cpp'],
      models: [served.info],
    },
    lastSeen: Date.now(),
    view: { epoch: 1, digest: 'd' },
  }
}

/** A member of `pool` with a started job service; `ring` is filled in by the test. */
async function withService(
  init: Partial<JobServiceInit> = {},
  ring: { members: RingMember[]; capacityBytes: number } = { members: [], capacityBytes: 1 << 30 },
) {
  const member = await mesh.member({ pools: [pool] })
  const store = openStore({ dataDir: await mesh.dir('store'), logger: silentLogger() })
  const service = jobService({
    model: served,
    threads: 1,
    createSingleEngine: (modelPath, threads) =>
      createLlamaCppEngine({ modelPath, threads, contextSize: 256 }),
    openTokenizer: (path) => openModelTokenizer(path),
    ...init,
  })({
    nodeId: member.nodeId,
    node: member.node,
    gate: member.gate,
    store,
    rings: {
      members: (poolId) => (poolId === pool.id ? ring.members : undefined),
      pools: () => [pool.id],
      capacityBytes: () => ring.capacityBytes,
    },
    logger: silentLogger(),
  })
  await service.start()
  started.push({ service, store })
  return { member, store, service, ring }
}

async function drain(job: AsyncGenerator<JobToken, JobResult, undefined>) {
  const tokens: JobToken[] = []
  for (;;) {
    const step = await job.next()
    if (step.done) return { tokens, result: step.value }
    tokens.push(step.value)
  }
}

const REQUEST = { prompt: 'the quick brown fox', maxTokens: 8, temperature: 0 }

/**
 * A whole-model engine that gives a token every 10 ms until `maxTokens` or its signal, then, when
 * cancelled, the text it held back (as llama.cpp does when a generation stops inside a UTF-8
 * character): one more token to send after the requester has gone.
 */
function tickingEngine(): SingleEngine {
  return {
    async *stream(_prompt, options) {
      const tokens: number[] = []
      const signal = options.signal
      while (tokens.length < (options.maxTokens ?? 1) && signal?.aborted !== true) {
        tokens.push(tokens.length)
        yield { id: tokens.length - 1, text: 'a' }
        await new Promise((resolve) => setTimeout(resolve, 10))
      }
      if (signal?.aborted) yield { id: tokens.at(-1) ?? 0, text: '\u00e9', textOnly: true }
      return {
        tokens,
        text: 'a'.repeat(tokens.length),
        stopReason: signal?.aborted ? 'abort' : 'maxTokens',
        timings: {
          promptTokens: 1,
          promptMs: 0,
          generatedTokens: tokens.length,
          generateMs: 0,
          tokensPerSecond: 0,
        },
      }
    },
    async dispose() {},
  }
}

/** The node's jobs once there is one and it has ended. */
function endedJobs(store: MeshStore) {
  const jobs = store.listJobs()
  return jobs.length > 0 && jobs.every((j) => j.status !== 'running' && j.status !== 'queued')
    ? jobs
    : undefined
}

describe('jobService', () => {
  it('runs a job whole on this node when it can hold the model, and keeps it in the store', async () => {
    const { service, store } = await withService()
    const { tokens, result } = await drain(service.run(REQUEST, { origin: 'cli' }))
    expect(result.mode).toBe('single')
    expect(tokens.filter((t) => !t.textOnly).map((t) => t.id)).toEqual(result.tokens)
    expect(result.tokens.length).toBeGreaterThan(0)
    const record = store.getJob(result.jobId)
    expect(record?.status).toBe('completed')
    expect(record?.stats).toMatchObject({ origin: 'cli', completionTokens: result.tokens.length })
    expect(service.status()).toMatchObject({ jobs: 1, failed: 0, running: 0 })
  })

  it('splits a job over the members that hold the model, with the same tokens, and credits them', async () => {
    const single = await withService()
    const alone = await drain(single.service.run(REQUEST, { origin: 'cli' }))
    // Two members that each offer less than the model needs whole (past what every member keeps
    // for its own process): the job must be split.
    const small = served.plan.reserveBytes + 4 * 1024 * 1024
    const a = await withService({}, { members: [], capacityBytes: small })
    const b = await withService({}, { members: [], capacityBytes: small })
    const ring = [ringEntry(a.member, small), ringEntry(b.member, small)]
    a.ring.members.push(...ring)
    b.ring.members.push(...ring)
    const { result } = await drain(a.service.run({ ...REQUEST, mode: 'pipeline' }, { origin: 'cli' }))
    expect(result.mode).toBe('pipeline')
    expect(result.tokens).toEqual(alone.result.tokens)
    expect(result.stats.members.sort()).toEqual([a.member.nodeId, b.member.nodeId].sort())
    expect(a.store.trustEvents(b.member.nodeId).map((e) => e.kind)).toContain('shard-completed')
    expect(a.store.getJob(result.jobId)?.stats).toMatchObject({ mode: 'pipeline', failovers: 0 })
  })

  it('streams a job whose every shard runs in this process: the event loop turns between tokens', async () => {
    const { member, service, ring } = await withService()
    ring.members.push(ringEntry(member, 1 << 30))
    const job = service.run({ ...REQUEST, mode: 'pipeline' }, { origin: 'cli' })
    let turns = 0
    const tick = setInterval(() => turns++, 0)
    const seen: number[] = []
    try {
      for (let step = await job.next(); !step.done; step = await job.next()) seen.push(turns)
    } finally {
      clearInterval(tick)
    }
    expect(seen).toHaveLength(REQUEST.maxTokens)
    // Timers ran while tokens came (a socket write would have been flushed), not only at the end.
    expect(seen.at(-1)!).toBeGreaterThan(seen[0]!)
  })

  it('refuses what it cannot run, naming why, and records failed jobs', async () => {
    const { service } = await withService()
    await expect(
      drain(service.run({ ...REQUEST, model: 'other.gguf' }, { origin: 'cli' })),
    ).rejects.toMatchObject({
      name: 'JobRefusedError',
      code: 'ERR_NO_MODEL',
    })
    await expect(
      drain(service.run({ ...REQUEST, poolId: 'pool-unknown' }, { origin: 'cli' })),
    ).rejects.toMatchObject({
      code: 'ERR_NO_RING',
    })
    await expect(drain(service.run({ ...REQUEST, maxTokens: 0 }, { origin: 'cli' }))).rejects.toMatchObject({
      name: 'InvalidArgumentError',
      message: expect.stringContaining('maxTokens'),
    })
    const none = await withService({ model: undefined })
    await expect(drain(none.service.run(REQUEST, { origin: 'cli' }))).rejects.toMatchObject({
      code: 'ERR_NO_MODEL',
    })
  })

  it('serves /meshnet/job/1.0.0 to pool members, refuses strangers, and rate-limits public jobs', async () => {
    const server = await withService({ public: false })
    const client = await mesh.member({ pools: [pool] })
    const asked = await drain(
      requestJob(client.node, server.member.node.multiaddrs()[0]!, {
        ...REQUEST,
        poolId: pool.id,
        mode: 'auto',
      }),
    )
    expect(asked.result.tokens.length).toBeGreaterThan(0)

    const stranger = await mesh.member({ pools: [] })
    const target = server.member.node.multiaddrs()[0]!
    await expect(drain(requestJob(stranger.node, target, REQUEST))).rejects.toMatchObject({
      name: 'JobFailedError',
      code: 'ERR_POOL_ACCESS',
    })
    expect(server.service.status()).toMatchObject({ refusedPublic: 1 })

    const open = await withService({ public: true, publicJobsPerMinute: 1, dht: false })
    const openTarget = open.member.node.multiaddrs()[0]!
    await drain(requestJob(stranger.node, openTarget, REQUEST))
    await expect(drain(requestJob(stranger.node, openTarget, REQUEST))).rejects.toMatchObject({
      code: 'ERR_RATE_LIMITED',
    })
    expect(open.service.status()).toMatchObject({ refusedPublic: 1, jobs: 1 })
  })

  it('ends a job within a second when its stream is reset right behind its request', async () => {
    const server = await withService({
      public: true,
      dht: false,
      createSingleEngine: async () => tickingEngine(),
    })
    const client = await mesh.member({ pools: [] })
    const stream = await client.node.dialProtocol(server.member.node.multiaddrs()[0]!, JOB_PROTOCOL)
    // The request frame and the reset in the same tick: they reach the node together.
    const body = encodeJobFrame({ v: 1, request: { ...REQUEST, maxTokens: 200 } })
    expect(body.byteLength).toBeLessThan(128)
    stream.send(Uint8Array.of(body.byteLength, ...body))
    stream.abort(new Error('the requester went away'))
    const jobs = await eventually('the job to end', () => endedJobs(server.store), 1_000, 20)
    expect(jobs.map((j) => j.status)).toEqual(['cancelled'])
    expect(server.service.status()).toMatchObject({ running: 0 })
  })

  it('ends a job within a second when its requester goes away while a token is on its way', async () => {
    const server = await withService({
      public: true,
      dht: false,
      createSingleEngine: async () => tickingEngine(),
    })
    const client = await mesh.member({ pools: [] })
    const controller = new AbortController()
    const job = requestJob(
      client.node,
      server.member.node.multiaddrs()[0]!,
      { ...REQUEST, maxTokens: 200 },
      { signal: controller.signal },
    )
    expect((await job.next()).value).toMatchObject({ index: 0 })
    controller.abort()
    await expect(job.next()).rejects.toMatchObject({ name: 'AbortError' })
    const jobs = await eventually('the job to end', () => endedJobs(server.store), 1_000, 20)
    expect(jobs.map((j) => j.status)).toEqual(['cancelled'])
    expect(server.service.status()).toMatchObject({ running: 0 })
  })
})
