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
// The ring and the timed runs are bench/sharded/run.ts's, which links.bench.ts runs over shaped links.
//
//   node --conditions=meshnet-source bench/sharded.bench.ts
//   SHARDED_BENCH_MODEL=quick   a 30M-parameter model instead (a quick run)
//   SHARDED_BENCH_TOKENS=32     tokens generated per run;  SHARDED_BENCH_REPEAT=5  runs per figure
//   MESHNET_BENCH_CACHE=dir     where the generated model is kept between runs (default: tmpdir)
import { availableParallelism, loadavg } from 'node:os'
import { createLlamaCppEngine } from '@meshnet/llama-cpp'
import type { ShardedGenerationStats } from '@meshnet/shards'
import { loopbackRoundTrip, table } from './lib.ts'
import {
  benchModel,
  describeModel,
  intervalsOf,
  type Measured,
  median,
  startShardedRing,
} from './sharded/run.ts'

const TOKENS = Number(process.env.SHARDED_BENCH_TOKENS ?? 32)
const REPEAT = Number(process.env.SHARDED_BENCH_REPEAT ?? 5)
const PROMPT_TOKENS = 32
const CONCURRENT = 4

const model = await benchModel()
const { facts, path: modelPath } = model
console.log(
  `model: ${describeModel(model)}; prompt ${PROMPT_TOKENS}, ${TOKENS} tokens per run, ${REPEAT} runs per figure`,
)

const ring = await startShardedRing({
  model,
  members: 2,
  promptTokens: PROMPT_TOKENS,
  tokens: TOKENS,
  repeat: REPEAT,
})
try {
  // The references, while the members are idle: llama.cpp and the Meshnet engine's one member.
  const llama = await createLlamaCppEngine({ modelPath, threads: 1, contextSize: 512 })
  const llamaIntervals: number[] = []
  let llamaBest = 0
  try {
    await llama.generate(ring.prompt(0), { maxTokens: 2, stopOnEog: false })
    for (let i = 0; i < REPEAT; i++) {
      const times: number[] = []
      const r = await llama.generate(ring.prompt(0), {
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

  const single = ring.single(0)
  const pipeline = ring.pipeline(2)
  const tensor = ring.tensor(2)

  const load = loadavg()[0]!
  const { one, pipe, tp, tpLibp2p, tpF16, pipeF16 } = await ring.measureAll({
    one: { plan: single },
    pipe: { plan: pipeline },
    tp: { plan: tensor },
    tpLibp2p: { plan: tensor, options: { links: 'libp2p' } },
    tpF16: { plan: tensor, options: { activations: 'f16' } },
    pipeF16: { plan: pipeline, options: { activations: 'f16' } },
  })
  const oneConcurrent = await ring.concurrent(single, CONCURRENT)
  const pipeConcurrent = await ring.concurrent(pipeline, CONCURRENT)

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
    'steps/pass': '-',
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
    {
      config: 'node-llama-cpp, 1 thread',
      ...cells(llamaBest, llamaTps),
      ...dash,
      'steps/pass': '-',
      'same tokens': '-',
    },
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
      'steps/pass': oneConcurrent.stepsPerPass.toFixed(2),
      'same tokens': '-',
    },
    {
      config: `pipeline, 2 members, ${CONCURRENT} sessions (aggregate)`,
      ...cells(pipeConcurrent.tps, '-'),
      ...details(pipeConcurrent.stats),
      'steps/pass': pipeConcurrent.stepsPerPass.toFixed(2),
      'same tokens': '-',
    },
  ])
  console.log(
    `tok/s: decode speed of the fastest of ${REPEAT} runs of ${TOKENS} tokens (after the first token); median tok/s: from the median gap between tokens over all runs. Aggregate: every token of ${CONCURRENT} concurrent sessions over their common span, fastest of ${REPEAT}; steps/pass: the sessions' steps the members' batchers ran per pass over their weights, over all runs.`,
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
  await ring.close()
}
