// Sharded inference across processes on loopback: one ring member at 1 thread against two members
// at 1 thread each (every member its own process with its own libp2p node, started with
// child_process.fork), with a coordinator in this process. Measured in the same run, on a generated
// Q8_0 llama of ~507M parameters (embd 1280, 24 layers, 20 heads over 4 KV heads, FFN 3584,
// vocab 32000):
//
//   - the references: node-llama-cpp at 1 thread, and one member holding the whole model;
//   - tensor parallel over two members (direct channel; libp2p streams; f16 activations):
//     decode speedup, goal ≥ 1.3× the single member;
//   - a pipeline over two members, one stream: goal ≥ 0.95× the single member;
//   - aggregate tokens/s of 4 concurrent sessions, which every member batches (continuous
//     batching): the pipeline's goal ≥ 3× the single member's single stream, one member's ≥ 2.5×;
//   - per-hop latency, all-reduce time (next to a plain loopback round trip) and bytes per token.
//
//   node --conditions=meshnet-source bench/sharded.bench.ts
//   SHARDED_BENCH_MODEL=quick   a 30M-parameter model instead (a quick run)
//   SHARDED_BENCH_TOKENS=32     tokens generated per run;  SHARDED_BENCH_REPEAT=5  runs per figure
//   MESHNET_BENCH_CACHE=dir     where the generated model is kept between runs (default: tmpdir)
import { type ChildProcess, fork } from 'node:child_process'
import { createHash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { availableParallelism, loadavg, tmpdir } from 'node:os'
import { join } from 'node:path'
import { createMeshNode } from '@meshnet/discovery'
import { generateIdentity, identityFromSeed, type NodeIdentity, randomSeed } from '@meshnet/identity'
import { createLlamaCppEngine } from '@meshnet/llama-cpp'
import { createJoinRequest, createPool, openPoolAdmin, PoolGate, saveJoinedPool } from '@meshnet/pool'
import { planPipeline, planTensor } from '@meshnet/ring'
import {
  readShardModelFacts,
  runShardedGeneration,
  type ShardedGenerationResult,
  type ShardedGenerationStats,
  type ShardedPlan,
} from '@meshnet/shards'
import { BENCH_507M, cachedModel, loopbackRoundTrip, table } from './lib.ts'

const SHAPES = {
  full: BENCH_507M,
  quick: { layers: 8, embd: 512, heads: 8, kvHeads: 4, ff: 1536, vocab: 8000 },
} as const
const size = process.env.SHARDED_BENCH_MODEL === 'quick' ? 'quick' : 'full'
const TOKENS = Number(process.env.SHARDED_BENCH_TOKENS ?? 32)
const REPEAT = Number(process.env.SHARDED_BENCH_REPEAT ?? 5)
const PROMPT_TOKENS = 32
const CONCURRENT = 4
const SEED = 5

const shape = SHAPES[size]
const modelPath = await cachedModel(shape, 'Q8_0', { seed: SEED })
const facts = await readShardModelFacts(modelPath)
const kvDim = facts.kvHeads * facts.headDim
const parameters =
  2 * facts.vocab * facts.embd +
  facts.layers *
    (2 * facts.embd * facts.embd + 2 * facts.embd * kvDim + 3 * facts.embd * facts.ff + 2 * facts.embd)
console.log(
  `model: ${(parameters / 1e6).toFixed(0)}M parameters (Q8_0, ${(facts.totalBytes / 2 ** 20).toFixed(0)} MiB), ${facts.layers} layers, embd ${facts.embd}; prompt ${PROMPT_TOKENS}, ${TOKENS} tokens per run, ${REPEAT} runs per figure`,
)

function promptOf(salt: number): number[] {
  return Array.from({ length: PROMPT_TOKENS }, (_, i) =>
    i === 0 ? 1 : (i * 7919 + salt * 104729) % facts.vocab,
  )
}

const root = await mkdtemp(join(tmpdir(), 'meshnet-bench-sharded-'))
const children: ChildProcess[] = []
try {
  // A real pool; the coordinator and each member hold a certificate in their own data dir.
  const adminIdentity = generateIdentity()
  const { pool } = await createPool(join(root, 'admin'), { name: 'bench' }, adminIdentity)
  const admin = await openPoolAdmin(join(root, 'admin'), pool.id, adminIdentity)
  const { token } = await admin.createJoinToken({ singleUse: false })
  // The join an agent makes over beacons, without the beacons: a signed request, the admin's answer.
  const enrol = async (identity: NodeIdentity, dataDir: string) => {
    const decision = await admin.handleJoinRequest(
      createJoinRequest(identity, { token, deviceName: 'bench' }).bytes,
    )
    if (decision.outcome !== 'accepted') throw new Error(`join refused: ${decision.outcome}`)
    await saveJoinedPool(dataDir, decision.response)
  }

  const startMember = async (index: number) => {
    const seed = randomSeed()
    const dataDir = join(root, `member-${index}`)
    await enrol(identityFromSeed(seed), dataDir)
    const child = fork(join(import.meta.dirname, 'sharded', 'member.ts'), [], {
      execArgv: ['--conditions=meshnet-source'],
      env: {
        ...process.env,
        SHARDED_BENCH_MEMBER: JSON.stringify({
          seed: Buffer.from(seed).toString('hex'),
          dataDir,
          model: modelPath,
          threads: 1,
          memoryBytes: 3.5 * 2 ** 30,
        }),
      },
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    })
    children.push(child)
    return await new Promise<{ nodeId: string; addrs: string[] }>((resolve, reject) => {
      child.once('message', (m) => resolve(m as { nodeId: string; addrs: string[] }))
      child.once('exit', (code) => reject(new Error(`member ${index} exited with ${code}`)))
    })
  }

  const coordinatorIdentity = generateIdentity()
  await enrol(coordinatorIdentity, join(root, 'coordinator'))
  const node = await createMeshNode({
    identity: coordinatorIdentity,
    localOnly: true,
    listen: ['/ip4/127.0.0.1/tcp/0'],
    websockets: false,
    dhtMode: 'off',
  })
  const gate = new PoolGate({ node, dataDir: join(root, 'coordinator') })
  await gate.start()
  const [a, b] = await Promise.all([startMember(0), startMember(1)])
  const sha256 = await hashOf(modelPath)

  try {
    // The references, while the members are idle: llama.cpp and the Meshnet engine's one member.
    const llama = await createLlamaCppEngine({ modelPath, threads: 1, contextSize: 512 })
    const llamaIntervals: number[] = []
    let llamaBest = 0
    try {
      await llama.generate(promptOf(0), { maxTokens: 2, stopOnEog: false })
      for (let i = 0; i < REPEAT; i++) {
        const times: number[] = []
        const r = await llama.generate(promptOf(0), {
          maxTokens: TOKENS,
          stopOnEog: false,
          onToken: () => times.push(performance.now()),
        })
        llamaIntervals.push(...intervalsOf(times))
        llamaBest = Math.max(llamaBest, r.timings.tokensPerSecond)
      }
    } finally {
      await llama.dispose()
    }
    const llamaTps = 1000 / median(llamaIntervals)

    const ring = [a, b].map((m) => ({ nodeId: m.nodeId, capacityBytes: 2 ** 32 }))
    const addrsOf = (id: string) => [a, b].find((m) => m.nodeId === id)!.addrs
    const withAddrs = <T extends { nodeId: string }>(s: T) => ({ ...s, addrs: addrsOf(s.nodeId) })
    const single: ShardedPlan = {
      mode: 'pipeline',
      shards: [{ nodeId: a.nodeId, layers: [0, facts.layers], addrs: a.addrs }],
    }
    const pipeline: ShardedPlan = { mode: 'pipeline', shards: planPipeline(ring, facts).map(withAddrs) }
    const tensor: ShardedPlan = { mode: 'tensor', shards: planTensor(ring, facts).map(withAddrs) }

    type RunOptions = { links?: 'direct' | 'libp2p'; activations?: 'f32' | 'f16' }
    /**
     * Decode tokens/s of the fastest run (the one least disturbed by other processes, the rule of
     * every bench here), and from the median gap between tokens over all runs.
     */
    interface Measured {
      result: ShardedGenerationResult
      intervals: number[]
      median: number
      best: number
    }
    const generate = async (plan: ShardedPlan, salt: number, tokens: number, options: RunOptions = {}) => {
      const gen = runShardedGeneration({
        node,
        gate,
        poolId: pool.id,
        model: { sha256 },
        plan,
        promptTokens: promptOf(salt),
        maxTokens: tokens,
        contextSize: PROMPT_TOKENS + TOKENS,
        openTimeoutMs: 600_000,
        stepTimeoutMs: 600_000,
        ...options,
      })
      const times: number[] = []
      for (;;) {
        const step = await gen.next()
        if (step.done) {
          const result = step.value as ShardedGenerationResult
          return { result, first: times[0] ?? 0, last: times.at(-1) ?? 0, intervals: intervalsOf(times) }
        }
        times.push(performance.now())
      }
    }
    /**
     * Best of REPEAT runs of each configuration, after a warm-up that loads the shards. The rounds
     * go over every configuration in turn, so that a busy moment of the machine does not fall on
     * one configuration only.
     */
    const measureAll = async <K extends string>(
      configs: Record<K, { plan: ShardedPlan; options?: RunOptions }>,
    ): Promise<Record<K, Measured>> => {
      const entries = Object.entries(configs) as Array<[K, { plan: ShardedPlan; options?: RunOptions }]>
      for (const [, c] of entries) await generate(c.plan, 0, 2, c.options)
      const out = {} as Record<K, Measured>
      for (let i = 0; i < REPEAT; i++) {
        for (const [k, c] of entries) {
          const { result, intervals } = await generate(c.plan, 0, TOKENS, c.options)
          out[k] ??= { result, intervals: [], median: 0, best: 0 }
          const m = out[k]
          m.intervals.push(...intervals)
          if (result.stats.tokensPerSecond > m.best) {
            m.best = result.stats.tokensPerSecond
            m.result = result
          }
        }
      }
      for (const m of Object.values(out) as Measured[]) m.median = 1000 / median(m.intervals)
      return out
    }
    /** Aggregate tokens/s of `CONCURRENT` sessions started together (different prompts). */
    const concurrent = async (plan: ShardedPlan) => {
      let best = 0
      let stats: ShardedGenerationStats | undefined
      for (let i = 0; i < REPEAT; i++) {
        const runs = await Promise.all(
          Array.from({ length: CONCURRENT }, (_, s) => generate(plan, s + 1, TOKENS)),
        )
        const tokens = runs.reduce((sum, r) => sum + r.result.tokens.length - 1, 0)
        const span = Math.max(...runs.map((r) => r.last)) - Math.min(...runs.map((r) => r.first))
        const tps = (tokens * 1000) / span
        if (tps > best) {
          best = tps
          stats = runs[0]!.result.stats
        }
      }
      return { tps: best, stats: stats! }
    }

    const load = loadavg()[0]!
    const { one, pipe, tp, tpLibp2p, tpF16, pipeF16 } = await measureAll({
      one: { plan: single },
      pipe: { plan: pipeline },
      tp: { plan: tensor },
      tpLibp2p: { plan: tensor, options: { links: 'libp2p' } },
      tpF16: { plan: tensor, options: { activations: 'f16' } },
      pipeF16: { plan: pipeline, options: { activations: 'f16' } },
    })
    const oneConcurrent = await concurrent(single)
    const pipeConcurrent = await concurrent(pipeline)

    const base = one.best
    const same = (m: Measured) => (m.result.tokens.join() === one.result.tokens.join() ? 'yes' : 'no')
    const cells = (tps: number, medianTps: number | string) => ({
      'tok/s': tps,
      'vs 1 member': `${(tps / base).toFixed(2)}×`,
      'median tok/s': medianTps,
    })
    const details = (s: ShardedGenerationStats) => ({
      'TTFT ms': Math.round(s.timeToFirstTokenMs),
      'compute ms/tok': s.computeMsPerToken ?? 0,
      'hop ms': s.hopLatencyMs ?? 0,
      'all-reduce ms': s.allReduceMs ?? '-',
      'KiB/token': (s.bytes.perToken ?? 0) / 1024,
      links:
        s.links.direct > 0
          ? `direct ×${s.links.direct}`
          : s.links.libp2p > 0
            ? `libp2p ×${s.links.libp2p}`
            : '-',
    })
    const row = (config: string, m: Measured, tokens = same(m)) => ({
      config,
      ...cells(m.best, m.median),
      ...details(m.result.stats),
      'same tokens': tokens,
    })
    const dash = {
      'TTFT ms': '-',
      'compute ms/tok': '-',
      'hop ms': '-',
      'all-reduce ms': '-',
      'KiB/token': '-',
      links: '-',
    }
    console.log()
    table([
      { config: 'node-llama-cpp, 1 thread', ...cells(llamaBest, llamaTps), ...dash, 'same tokens': '-' },
      row('1 member, 1 thread (reference)', one, 'ref'),
      row('pipeline, 2 members', pipe),
      row('pipeline, 2 members, f16 activations', pipeF16),
      row('tensor, 2 members, direct channel', tp),
      row('tensor, 2 members, libp2p streams', tpLibp2p),
      row('tensor, 2 members, f16 activations', tpF16),
      {
        config: `1 member, ${CONCURRENT} sessions (aggregate)`,
        ...cells(oneConcurrent.tps, '-'),
        ...details(oneConcurrent.stats),
        'same tokens': '-',
      },
      {
        config: `pipeline, 2 members, ${CONCURRENT} sessions (aggregate)`,
        ...cells(pipeConcurrent.tps, '-'),
        ...details(pipeConcurrent.stats),
        'same tokens': '-',
      },
    ])
    console.log(
      `tok/s: decode speed of the fastest of ${REPEAT} runs of ${TOKENS} tokens (after the first token); median tok/s: from the median gap between tokens over all runs. Aggregate: every token of ${CONCURRENT} concurrent sessions over their common span, fastest of ${REPEAT}.`,
    )
    console.log(
      `load average of the machine: ${load.toFixed(1)} before, ${loadavg()[0]!.toFixed(1)} after (${availableParallelism()} cores)`,
    )
    const verdict = (ratio: number, goal: number) =>
      `${ratio.toFixed(2)}× (goal ≥ ${goal}×: ${ratio >= goal ? 'met' : 'NOT met'})`
    console.log()
    console.log(`tensor-parallel decode speedup, 2 members vs 1: ${verdict(tp.best / base, 1.3)}`)
    console.log(`pipeline single-stream ratio, 2 members vs 1:   ${verdict(pipe.best / base, 0.95)}`)
    console.log(
      `pipeline aggregate, ${CONCURRENT} sessions:              ${verdict(pipeConcurrent.tps / base, 3)} one member's single stream (${(pipeConcurrent.tps / oneConcurrent.tps).toFixed(2)}× one member's ${CONCURRENT} sessions)`,
    )
    console.log(
      `one member, ${CONCURRENT} sessions (batched):            ${verdict(oneConcurrent.tps / base, 2.5)} its single stream`,
    )
    const rtt = await loopbackRoundTrip(facts.embd * 4)
    console.log(
      `all-reduce channel: direct ${(tp.result.stats.allReduceMs ?? 0).toFixed(3)} ms per exchange vs libp2p ${(tpLibp2p.result.stats.allReduceMs ?? 0).toFixed(3)} ms (${2 * facts.layers} exchanges per token); a plain loopback TCP round trip of the same ${facts.embd * 4} bytes: ${rtt.toFixed(3)} ms`,
    )
  } finally {
    await gate.stop()
    await node.stop()
  }
} finally {
  for (const child of children) {
    if (child.exitCode === null) {
      const exited = new Promise((resolve) => child.once('exit', resolve))
      child.send('stop')
      await exited
    }
  }
  await rm(root, { recursive: true, force: true })
}

async function hashOf(path: string): Promise<string> {
  const digest = createHash('sha256')
  for await (const chunk of createReadStream(path)) digest.update(chunk as Buffer)
  return digest.digest('hex')
}

/** Gaps between consecutive token times (ms). */
function intervalsOf(times: readonly number[]): number[] {
  return times.slice(1).map((t, i) => t - times[i]!)
}

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.floor(sorted.length / 2)] ?? Number.NaN
}
