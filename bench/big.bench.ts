// A model bigger than one member should hold: a Llama-3-8B-shaped llama (32 layers, embd 4096, 32
// heads over 8 KV heads, FFN 14336, vocabulary 128256) in Q4_K_M, 4.6 GiB, generated with the
// tiled fill and cached. Every process at 1 thread; measured in the same run:
//
//   - the references: llama.cpp on the whole file (llama-bench: decode tok/s, and time to first
//     token of a fresh process: load + cold prompt pass), and llama.cpp with the layers split over
//     2 and 3 ggml RPC servers on 127.0.0.1 (see llama-tools.ts; skipped with a line saying why
//     when the tools cannot be built);
//   - Meshnet over 1, 2 and 3 members: real `mesh start` agents in one pool on loopback (LAN beacons
//     on 127.0.0.1), each offering a bit more memory (`--memory`) than its share of the model, one
//     job forced to a pipeline (`mode: 'pipeline'`) sent to the pool root's control API. Per
//     configuration: spawn → ring converged, spawn → ring ready (every member reports its shard
//     loaded; a ring of one loads nothing ahead, so converged), time to first token of the first
//     job (from sending it to its first token line), decode tok/s (the coordinator's JobStats:
//     tokens after the first over their time; also as the lines reached the bench, where a burst
//     shows), and each member's RSS and peak RSS after the job (VmRSS / VmHWM).
//
// Bars (PASS/MISS, never an exit code): pipeline decode over 2 and 3 members ≥ 1.0× llama.cpp RPC
// over as many servers; first token of the first job ≤ 1.5× llama.cpp's time to first token on the
// whole file. A configuration that fails is a row with its error, and the run goes on; the exit
// code is non-zero when one failed.
//
//   pnpm bench big
//   BENCH_BIG_SHAPE=quick      an 8-layer, embd 1024 model instead (95 MiB; under a minute), to iterate
//   BENCH_BIG_MEMBERS=1,2,3    Meshnet ring sizes (and RPC server counts, for those ≥ 2)
//   BENCH_BIG_TOKENS=32        tokens generated per job (and decoded by llama-bench)
//   BENCH_BIG_PROMPT=64        prompt tokens
//   MESHNET_BENCH_CACHE=dir    where the model is kept between runs (default $TMPDIR/meshnet-bench-big)

import { mkdir, mkdtemp, readFile, rename, rm, stat } from 'node:fs/promises'
import { request } from 'node:http'
import { availableParallelism, loadavg, tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { openSpmTokenizer } from '@meshnet/engine'
import { generateModel } from '@meshnet/gguf'
import { readShardModelFacts } from '@meshnet/shards'
import { type AgentProcess, agentRequest, beaconPort, startAgentProcess } from '@meshnet/test-harness'
import { makePool, table } from './lib.ts'
import {
  type LlamaCppFigures,
  type LlamaRpcFigures,
  type LlamaTools,
  llamaTools,
  measureLlamaCpp,
  measureLlamaRpc,
} from './llama-tools.ts'

const SHAPES = {
  full: { layers: 32, embd: 4096, heads: 32, kvHeads: 8, ff: 14336, vocab: 128256, context: 8192 },
  quick: { layers: 8, embd: 1024, heads: 16, kvHeads: 4, ff: 2816, vocab: 32000, context: 2048 },
} as const
const SHAPE_NAME = process.env.BENCH_BIG_SHAPE === 'quick' ? 'quick' : 'full'
const SHAPE = SHAPES[SHAPE_NAME]
const TYPE = 'Q4_K_M'
const SEED = 0
const THREADS = 1
const positive = (name: string, fallback: string): number[] => {
  const values = (process.env[name] ?? fallback).split(',').map(Number)
  if (values.some((v) => !Number.isInteger(v) || v < 1)) {
    throw new Error(`${name}=${process.env[name]}: expected positive whole numbers, comma-separated`)
  }
  return values
}
const MEMBERS = positive('BENCH_BIG_MEMBERS', '1,2,3')
const [TOKENS] = positive('BENCH_BIG_TOKENS', '32') as [number]
const [PROMPT] = positive('BENCH_BIG_PROMPT', '64') as [number]
/** How long a ring may take to become ready, and a job to finish (a 1-thread 8B prompt pass is slow). */
const READY_TIMEOUT_MS = 30 * 60_000
const JOB_TIMEOUT_MS = 60 * 60_000
const TTFT_BAR = 1.5
const DECODE_BAR = 1.0

const cacheDir = process.env.MESHNET_BENCH_CACHE ?? join(tmpdir(), 'meshnet-bench-big')
const s = SHAPE
const modelPath = join(
  cacheDir,
  `big-l${s.layers}-e${s.embd}-h${s.heads}-kv${s.kvHeads}-ff${s.ff}-v${s.vocab}-c${s.context}-${TYPE}-tiled-s${SEED}.gguf`,
)

const log = (line: string) => console.log(`${new Date().toISOString().slice(11, 19)} ${line}`)
const seconds = (ms: number) => `${(ms / 1000).toFixed(1)} s`

/** Every agent spawned and not yet stopped, so that an interrupt can take them down too. */
const live = new Set<AgentProcess>()
process.once('SIGINT', () => {
  void Promise.all([...live].map((a) => a.kill())).then(() => process.exit(130))
})

await mkdir(cacheDir, { recursive: true })
if ((await stat(modelPath).catch(() => undefined)) === undefined) {
  log(`writing ${modelPath} (tiled fill)`)
  const started = performance.now()
  const partial = `${modelPath}.${process.pid}.partial`
  const made = await generateModel({ out: partial, ...SHAPE, type: TYPE, seed: SEED, fill: 'tiled' })
  await rename(partial, modelPath)
  log(
    `wrote ${(made.bytes / 2 ** 30).toFixed(2)} GiB in ${seconds(performance.now() - started)} (${(made.parameters / 1e9).toFixed(2)}B parameters)`,
  )
}
const facts = await readShardModelFacts(modelPath)
const prompt = await promptOf(PROMPT)
log(
  `model: ${SHAPE_NAME} shape, ${TYPE}, ${(facts.totalBytes / 2 ** 30).toFixed(2)} GiB of weights, ${facts.layers} layers; prompt ${prompt.tokens} tokens, ${TOKENS} generated, ${THREADS} thread per process, ${availableParallelism()} cores`,
)

let failed = 0
const loadBefore = loadavg()[0]!

// The references.
let llama: LlamaCppFigures | undefined
const rpc = new Map<number, LlamaRpcFigures>()
const referenceRows: Array<Record<string, string | number>> = []
const REFERENCE_COLUMNS = ['load s', 'TTFT ms', 'prompt tok/s', 'decode tok/s'] as const
const tools: LlamaTools | { skip: string } = await llamaTools({ log }).catch((err: unknown) => {
  failed++
  return { skip: `building llama.cpp's tools failed: ${firstLine(err)}` }
})
const measure = { threads: THREADS, promptTokens: PROMPT, genTokens: TOKENS, repetitions: 2 }
if ('skip' in tools) {
  log(`llama.cpp references skipped: ${tools.skip}`)
} else {
  const reference = async <T extends LlamaCppFigures>(config: string, run: () => Promise<T>) => {
    log(`measuring ${config}`)
    try {
      const figures = await run()
      referenceRows.push({
        config,
        'load s': figures.loadMs / 1000,
        'TTFT ms': Math.round(figures.ttftMs),
        'prompt tok/s': figures.promptTokPerS,
        'decode tok/s': figures.decodeTokPerS,
        error: '',
      })
      return figures
    } catch (err) {
      failed++
      referenceRows.push({ config, ...dashes(REFERENCE_COLUMNS), error: firstLine(err) })
      log(`${config} failed: ${err instanceof Error ? err.message : String(err)}`)
      return undefined
    }
  }
  llama = await reference('llama.cpp, whole file', () => measureLlamaCpp(tools, modelPath, measure))
  for (const servers of MEMBERS.filter((n) => n >= 2)) {
    const figures = await reference(`llama.cpp RPC, ${servers} servers`, () =>
      measureLlamaRpc(tools, modelPath, { ...measure, servers }),
    )
    if (figures) rpc.set(servers, figures)
  }
}

// Meshnet.
interface MeshFigures {
  convergedMs: number
  readyMs: number
  layers: string
  /** From sending the job to its first token line on the control API. */
  firstTokenMs: number
  /** The coordinator's own figures (JobStats): from starting the generation, and its decode rate. */
  coordinatorTtftMs: number
  decodeTokPerS: number
  /** Decode rate as the token lines reached this client (a burst shows as a very high rate). */
  clientTokPerS: number
  tokens: number
  rss: Array<{ rssMiB: number; peakMiB: number }>
}
const MESH_COLUMNS = [
  'converged s',
  'ready s',
  'first token ms',
  'coord. TTFT ms',
  'decode tok/s',
  'client tok/s',
  'RSS MiB',
  'peak MiB',
  'layers',
] as const
const meshRows: Array<Record<string, string | number>> = []
const meshFigures = new Map<number, MeshFigures>()
for (const n of MEMBERS) {
  const config = `Meshnet pipeline, ${n} member${n === 1 ? '' : 's'}`
  log(`measuring ${config} (--memory ${memoryMiB(n)} MiB each)`)
  try {
    const m = await runMeshnet(n)
    meshFigures.set(n, m)
    meshRows.push({
      config,
      'converged s': m.convergedMs / 1000,
      'ready s': m.readyMs / 1000,
      'first token ms': Math.round(m.firstTokenMs),
      'coord. TTFT ms': Math.round(m.coordinatorTtftMs),
      'decode tok/s': m.decodeTokPerS,
      'client tok/s': m.clientTokPerS,
      'RSS MiB': m.rss.map((r) => r.rssMiB).join(' / '),
      'peak MiB': m.rss.map((r) => r.peakMiB).join(' / '),
      layers: m.layers,
      error: '',
    })
  } catch (err) {
    failed++
    meshRows.push({ config, ...dashes(MESH_COLUMNS), error: firstLine(err) })
    log(`${config} failed: ${err instanceof Error ? err.message : String(err)}`)
  }
}

console.log()
if (referenceRows.length > 0) table(referenceRows)
else console.log(`llama.cpp references: skipped (${'skip' in tools ? tools.skip : 'none measured'})`)
console.log()
table(meshRows)
console.log(
  `References: llama-bench medians of ${measure.repetitions} runs in a warm process (decode: ${TOKENS} single-token passes); TTFT: a fresh llama-bench process, load + cold ${PROMPT}-token prompt pass. ` +
    'Meshnet: converged / ready s = from spawning `mesh start` to the ring converged with a plan / to every planned member reporting its shard loaded (a ring of one loads nothing ahead: converged). ' +
    `first token = from sending the first job to its first token line; coord. TTFT and decode = the coordinator's JobStats (from starting the generation; tokens after the first over their time); client tok/s = the same as the token lines arrived here; RSS / peak per member after the job.`,
)
console.log(
  `load average: ${loadBefore.toFixed(1)} before, ${loadavg()[0]!.toFixed(1)} after (${availableParallelism()} cores)`,
)

console.log()
const verdict = (ratio: number, bar: number, atLeast: boolean) =>
  `${ratio.toFixed(2)}× (bar ${atLeast ? '≥' : '≤'} ${bar.toFixed(1)}×: ${(atLeast ? ratio >= bar : ratio <= bar) ? 'PASS' : 'MISS'})`
for (const [n, m] of meshFigures) {
  const ref = rpc.get(n)
  if (n >= 2) {
    console.log(
      `pipeline decode, ${n} members vs llama.cpp RPC over ${n} servers: ${ref ? verdict(m.decodeTokPerS / ref.decodeTokPerS, DECODE_BAR, true) : 'no reference'}`,
    )
  }
  console.log(
    `first token of the first job, ${n} member${n === 1 ? '' : 's'} vs llama.cpp TTFT on the whole file: ${llama ? verdict(m.firstTokenMs / llama.ttftMs, TTFT_BAR, false) : 'no reference'}`,
  )
}
if (failed > 0) {
  console.log(`${failed} configuration${failed === 1 ? '' : 's'} failed (see the error column)`)
  process.exitCode = 1
}

/** Memory each of `n` members offers: its share of the weights and KV cache, with room to spare. */
function memoryMiB(n: number): number {
  const perLayer = facts.bytesPerLayer + facts.kvBytesPerLayer
  const share = (facts.layers * perLayer + facts.embedBytes + facts.headBytes) / n
  return Math.ceil(((facts.reserveBytes + share + perLayer) * 1.1) / 2 ** 20)
}

/** Starts `n` agents in one pool, waits for the ring, runs one pipeline job, reads each member's RSS. */
async function runMeshnet(n: number): Promise<MeshFigures> {
  const root = await mkdtemp(join(tmpdir(), `meshnet-bench-big-${n}-`))
  const agents: AgentProcess[] = []
  try {
    const { poolId, dirs } = await makePool(root, n)
    const args = [
      '--local-only',
      '--beacon-port',
      beaconPort(),
      '--beacon-interval',
      '500',
      '--model',
      modelPath,
      '--threads',
      String(THREADS),
      '--memory',
      String(memoryMiB(n)),
    ]
    const spawned = performance.now()
    const started = await Promise.allSettled(
      dirs.map((dir) =>
        startAgentProcess(dir, args, {
          env: { MESH_LOG: process.env.MESH_LOG ?? 'warn' },
          timeoutMs: READY_TIMEOUT_MS,
        }).then((agent) => {
          agents.push(agent)
          live.add(agent)
          return agent
        }),
      ),
    )
    const refused = started.find((r) => r.status === 'rejected')
    if (refused) throw new Error(`an agent did not start: ${tail(String(refused.reason))}`)

    // Converged with a plan over all n, then ready (every planned member's shard loaded).
    let convergedMs: number | undefined
    let readyHow = ''
    const deadline = spawned + READY_TIMEOUT_MS
    let ring: RingStatus | undefined
    for (;;) {
      if (performance.now() > deadline) {
        throw new Error(
          `the ring was not ready within ${seconds(READY_TIMEOUT_MS)}: ${JSON.stringify(ring ?? null).slice(0, 400)}`,
        )
      }
      const dead = agents.find((a) => a.process.exitCode !== null || a.process.signalCode !== null)
      if (dead) throw new Error(`an agent exited: ${tail(dead.output())}`)
      ring = await agentRequest<RingStatus>(dirs[0]!, `/rings/${poolId}`).catch(() => undefined)
      const planned = ring?.members.filter((m) => m.shard !== null) ?? []
      if (ring?.converged && ring.members.length === n && planned.length > 0) {
        convergedMs ??= performance.now() - spawned
        const failedLoad = planned.find((m) => m.shard?.load === 'failed')
        if (failedLoad)
          throw new Error(`a member failed to load its shard: ${failedLoad.shard?.error ?? '?'}`)
        if (ring.ready === undefined) {
          readyHow = 'no load states in the ring status, so converged with a plan'
          break
        }
        if (ring.ready) {
          readyHow = 'every member reports its shard loaded'
          break
        }
        if (planned.length === 1 && planned[0]!.shard?.load === 'pending') {
          readyHow = 'a ring of one loads nothing ahead: converged'
          break
        }
      }
      await sleep(200)
    }
    const readyMs = performance.now() - spawned
    const layers = ring!.members
      .filter((m) => m.shard !== null)
      .map((m) => `[${m.shard!.layers[0]},${m.shard!.layers[1]})`)
      .join(' ')
    log(
      `ring ready after ${seconds(readyMs)} (converged after ${seconds(convergedMs!)}; ${readyHow}): layers ${layers}`,
    )

    const job = await runJob(dirs[0]!, {
      prompt: prompt.text,
      maxTokens: TOKENS,
      mode: 'pipeline',
      poolId,
    })
    const rss = await Promise.all(agents.map((a) => memoryOf(a.process.pid!)))
    log(
      `first token after ${Math.round(job.firstTokenMs)} ms, ${job.tokens} tokens, decode ${job.result.stats.tokensPerSecond.toFixed(2)} tok/s (${job.decodeTokPerS.toFixed(2)} as received; ${job.result.mode}, ${job.result.stopReason}, prompt ${job.result.stats.promptTokens} tokens)`,
    )
    return {
      convergedMs: convergedMs!,
      readyMs,
      layers,
      firstTokenMs: job.firstTokenMs,
      coordinatorTtftMs: job.result.stats.timeToFirstTokenMs,
      decodeTokPerS: job.result.stats.tokensPerSecond,
      clientTokPerS: job.decodeTokPerS,
      tokens: job.tokens,
      rss,
    }
  } finally {
    await Promise.all(
      agents.map(async (agent) => {
        const stopped = await Promise.race([agent.stop().then(() => true), sleep(15_000).then(() => false)])
        if (!stopped) await agent.kill()
        live.delete(agent)
      }),
    )
    await rm(root, { recursive: true, force: true })
  }
}

interface RingStatus {
  converged: boolean
  /** Absent before agents announced load states. */
  ready?: boolean
  members: Array<{
    nodeId: string
    shard: {
      layers: [number, number]
      load?: 'pending' | 'loading' | 'ready' | 'failed'
      error?: string
    } | null
  }>
}

interface JobEnd {
  mode: string
  stopReason: string
  tokens: number[]
  stats: { timeToFirstTokenMs: number; promptTokens: number; tokensPerSecond: number }
}

/**
 * Sends a job to an agent's control API and reads its NDJSON stream (node:http: no header or body
 * timeout, since the first line comes after the whole prompt pass).
 */
async function runJob(
  dataDir: string,
  body: Record<string, unknown>,
): Promise<{ firstTokenMs: number; decodeTokPerS: number; tokens: number; result: JobEnd }> {
  const info = JSON.parse(await readFile(join(dataDir, 'agent.json'), 'utf8')) as { port: number }
  const token = (await readFile(join(dataDir, 'control.token'), 'utf8')).trim()
  const payload = JSON.stringify(body)
  const sent = performance.now()
  const times: number[] = []
  const result = await new Promise<JobEnd>((resolve, reject) => {
    const req = request(
      {
        host: '127.0.0.1',
        port: info.port,
        method: 'POST',
        path: '/jobs',
        headers: {
          authorization: `Bearer ${token}`,
          'content-type': 'application/json',
          'content-length': Buffer.byteLength(payload),
        },
        signal: AbortSignal.timeout(JOB_TIMEOUT_MS),
      },
      (res) => {
        res.setEncoding('utf8')
        let pending = ''
        let whole = ''
        let end: JobEnd | undefined
        const onLine = (line: string) => {
          if (line.trim() === '') return
          const message = JSON.parse(line) as {
            type: string
            result?: JobEnd
            error?: { message?: string }
            textOnly?: boolean
          }
          if (message.type === 'token' && message.textOnly !== true) times.push(performance.now())
          else if (message.type === 'end') end = message.result
          else if (message.type === 'error') reject(new Error(`job failed: ${message.error?.message}`))
        }
        res.on('data', (chunk: string) => {
          if (res.statusCode !== 200) {
            whole += chunk
            return
          }
          pending += chunk
          const lines = pending.split('\n')
          pending = lines.pop() ?? ''
          for (const line of lines) onLine(line)
        })
        res.on('end', () => {
          if (res.statusCode !== 200) {
            const error = (JSON.parse(whole || '{}') as { error?: { message?: string } }).error
            reject(new Error(`job refused (${res.statusCode}): ${error?.message ?? whole}`))
            return
          }
          onLine(pending)
          if (end) resolve(end)
          else reject(new Error('the job stream ended without a result'))
        })
        res.on('error', reject)
      },
    )
    req.on('error', reject)
    req.end(payload)
  })
  if (times.length === 0) throw new Error(`the job gave no token (${result.stopReason})`)
  const decodeMs = times.at(-1)! - times[0]!
  return {
    firstTokenMs: times[0]! - sent,
    decodeTokPerS: times.length > 1 ? ((times.length - 1) * 1000) / decodeMs : 0,
    tokens: times.length,
    result,
  }
}

/** Current and peak resident memory of a process, in MiB (Linux /proc). */
async function memoryOf(pid: number): Promise<{ rssMiB: number; peakMiB: number }> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8').catch(() => '')
  const kib = (key: string) =>
    Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? Number.NaN)
  return { rssMiB: Math.round(kib('VmRSS') / 1024), peakMiB: Math.round(kib('VmHWM') / 1024) }
}

/** A prompt of about `count` tokens (with BOS) in the model's own tokenizer: common words. */
async function promptOf(count: number): Promise<{ text: string; tokens: number }> {
  const opened = await openSpmTokenizer(modelPath, 'meshnet')
  if (opened === undefined) throw new Error(`${modelPath} has no SentencePiece vocabulary`)
  try {
    const words = 'the people of every city came down to the river when the night was long and'.split(' ')
    let text = ''
    let tokens = 0
    for (let i = 0; tokens < count; i++) {
      const next = `${text}${i === 0 ? '' : ' '}${words[i % words.length]}`
      const n = opened.tokenizer.tokenize(next, { addSpecial: true }).length
      if (n > count) break
      text = next
      tokens = n
    }
    return { text, tokens }
  } finally {
    await opened.dispose()
  }
}

/** Cells of a row whose configuration failed. */
function dashes(columns: readonly string[]): Record<string, string> {
  return Object.fromEntries(columns.map((k) => [k, '-']))
}

function firstLine(err: unknown): string {
  const message = err instanceof Error ? err.message : String(err)
  const line = message.split('\n').find((l) => l.trim() !== '') ?? message
  return line.length > 160 ? `${line.slice(0, 157)}...` : line
}

function tail(text: string, lines = 8): string {
  return text.trim().split('\n').slice(-lines).join('\n')
}
