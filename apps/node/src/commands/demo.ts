import { type ChildProcess, execFile, spawn } from 'node:child_process'
import { once } from 'node:events'
import { access, mkdir, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { InvalidArgumentError, MeshError, printJson } from '@meshnet/core'
import { generateModel } from '@meshnet/gguf'
import { dataDirLayout } from '@meshnet/identity'
import { createLlamaCppEngine } from '@meshnet/llama-cpp'
import type { JobResult, JobToken } from '@meshnet/protocols'
import type { Command } from 'commander'
import { z } from 'zod'
import { type AgentClient, connectAgent } from '../agent/control-api.ts'
import { parseFlag } from '../config.ts'
import type { CommandContext } from '../context.ts'

/** The built-in model: a deterministic llama (F32, so every engine's greedy tokens agree exactly). */
export const DEMO_MODEL = {
  layers: 8,
  embd: 512,
  heads: 8,
  kvHeads: 4,
  ff: 1536,
  vocab: 2000,
  type: 'F32',
  seed: 7,
} as const

const DEMO_PROMPT = 'Ordinary computers pool their memory and'
const NAMES = ['A', 'B', 'C'] as const

/** The demo could not finish (an agent did not start, the ring did not converge). */
export class DemoError extends MeshError {
  override name = 'DemoError' as const
  constructor(message: string, hint?: string) {
    super('ERR_DEMO', message, hint === undefined ? {} : { hint })
  }
}

interface DemoFlags {
  model?: string
  prompt: string
  maxTokens: string
  keep?: boolean
  dir?: string
}

interface Figures {
  mode: string
  tokens: number
  tokensPerSecond: number
  timeToFirstTokenMs: number
  hopLatencyMs: number
  bytesMoved: number
  failovers: number
  sameAsLlamaCpp: boolean
}

/**
 * `mesh demo`: a whole mesh on this machine. Three agents (separate processes, loopback only) form a
 * pool over LAN beacons on 127.0.0.1, agree on a ring, and run one prompt as a pipeline and as tensor
 * parallel; then one member is killed mid-generation and the job fails over. Every result is checked
 * against llama.cpp running the whole model in one process.
 */
export function registerDemo(program: Command, context: (cmd: Command) => CommandContext): void {
  program
    .command('demo')
    .description(
      'run a three-node mesh on this machine (loopback only) and a sharded generation checked against llama.cpp',
    )
    .option('--model <gguf>', 'a GGUF model (default: a generated 8-layer llama, written to the demo dir)')
    .option('--prompt <text>', 'the text to continue', DEMO_PROMPT)
    .option('--max-tokens <n>', 'tokens per generation', '32')
    .option('--dir <path>', 'where the three nodes’ data dirs go (default: a new temp dir)')
    .option('--keep', 'keep the data dirs and the model afterwards')
    .action(async (flags: DemoFlags, cmd: Command) => {
      const ctx = context(cmd)
      const maxTokens = parseFlag('--max-tokens', z.coerce.number().int().min(2).max(4096), flags.maxTokens)
      const root =
        flags.dir === undefined ? await mkdtemp(join(tmpdir(), 'meshnet-demo-')) : resolve(flags.dir)
      await mkdir(root, { recursive: true })
      const started = performance.now()
      const timeline: Array<{ atMs: number; event: string }> = []
      const say = (line = '') => {
        if (!ctx.json) ctx.io.stdout.write(`${line}\n`)
      }
      /** A timeline entry: `T+1.2s  what happened`, as the LAN quick start lays out its steps. */
      const mark = (event: string) => {
        const atMs = Math.round(performance.now() - started)
        timeline.push({ atMs, event })
        say(`T+${(atMs / 1000).toFixed(1)}s  ${event}`)
      }
      const agents: ChildProcess[] = []
      const stopAll = async () => {
        await Promise.all(
          agents.map(async (child) => {
            if (child.exitCode !== null || child.signalCode !== null) return
            child.kill('SIGTERM')
            await once(child, 'exit')
          }),
        )
      }
      process.once('SIGINT', () => void stopAll().then(() => process.exit(130)))
      try {
        const model = flags.model === undefined ? join(root, 'demo-model.gguf') : resolve(flags.model)
        if (flags.model === undefined) {
          mark(
            `writing the built-in model (llama, ${DEMO_MODEL.layers} layers, embd ${DEMO_MODEL.embd}, F32)`,
          )
          await generateModel({ ...DEMO_MODEL, out: model, name: 'meshnet-demo' })
        } else {
          await access(model).catch(() => {
            throw new InvalidArgumentError(`--model ${model}: no such file`)
          })
        }
        const dir = (name: string) => join(root, name)
        const beaconPort = String(43_000 + Math.floor(Math.random() * 10_000))
        const agentArgs = [
          '--local-only',
          '--beacon-port',
          beaconPort,
          '--beacon-interval',
          '500',
          '--model',
          model,
          '--threads',
          '1',
        ]

        const pool = JSON.parse(
          await mesh(['pool-create', '--name', 'demo-pool', '--json', '--data-dir', dir('A')]),
        ) as { poolId: string; joinToken: string }
        mark(`node A created pool ${pool.poolId}`)
        agents.push(await startAgent(dir('A'), agentArgs))
        mark('node A agent running (LAN beacons on 127.0.0.1)')
        for (const name of NAMES.slice(1)) {
          await mesh([
            'pool-join',
            '--token',
            pool.joinToken,
            '--local-only',
            '--beacon-port',
            beaconPort,
            '--timeout',
            '30',
            '--data-dir',
            dir(name),
          ])
          mark(`node ${name} joined the pool over LAN beacons (certificate signed by A)`)
          agents.push(await startAgent(dir(name), agentArgs))
          mark(`node ${name} agent running`)
        }
        const a = await connectAgent(dataDirLayout(dir('A')))
        const ring = await waitForRing(a, pool.poolId, 3)
        mark(`ring converged: epoch ${ring.epoch}, ${ring.members.length} members, topology files written`)
        const loaded = await waitForReady(a, pool.poolId)
        const held = loaded.members.reduce((sum, m) => sum + (m.shard?.bytes ?? 0), 0)
        mark(`ring ready: every member loaded its shard (${(held / 2 ** 20).toFixed(1)} MiB in all)`)
        const names = new Map<string, string>()
        for (const name of NAMES) names.set((await connectAgent(dataDirLayout(dir(name)))).info.nodeId, name)
        for (const member of ring.members) {
          const layers = member.shard?.layers
          say(
            `         ${member.position}  ${names.get(member.nodeId) ?? '?'}  ${member.nodeId}${layers ? `  layers [${layers[0]}, ${layers[1]})` : ''}`,
          )
        }

        mark('reference: llama.cpp runs the whole model in one process')
        const llama = await createLlamaCppEngine({ modelPath: model, threads: 1 })
        let reference: number[]
        try {
          reference = (await llama.generate(flags.prompt, { maxTokens })).tokens
        } finally {
          await llama.dispose()
        }

        const figures: Figures[] = []
        const run = async (mode: 'pipeline' | 'tensor', onFirstToken?: () => void) => {
          mark(
            `job: ${mode === 'pipeline' ? 'pipeline (layer ranges)' : 'tensor parallel (heads and FFN columns)'}`,
          )
          if (!ctx.json) ctx.io.stdout.write(`  ${flags.prompt}`)
          const job = a.stream<JobToken, JobResult>('/jobs', { prompt: flags.prompt, maxTokens, mode })
          for (let step = await job.next(); ; step = await job.next()) {
            if (step.done) {
              const { stats } = step.value
              const same = sameTokens(step.value.tokens, reference)
              figures.push({
                mode: stats.failovers > 0 ? `${mode} with failover` : mode,
                tokens: step.value.tokens.length,
                tokensPerSecond: stats.tokensPerSecond,
                timeToFirstTokenMs: stats.timeToFirstTokenMs,
                hopLatencyMs: stats.hopLatencyMs,
                bytesMoved: stats.bytesMoved,
                failovers: stats.failovers,
                sameAsLlamaCpp: same,
              })
              say(
                `\n  ${stats.members.length} members · ${stats.tokensPerSecond.toFixed(1)} tok/s · first token ${stats.timeToFirstTokenMs.toFixed(0)} ms · hop ${stats.hopLatencyMs.toFixed(2)} ms · ${(stats.bytesMoved / 1024).toFixed(0)} KiB moved${stats.failovers > 0 ? ` · ${stats.failovers} failover` : ''}`,
              )
              say(`  same tokens as llama.cpp on one node: ${same ? 'yes' : 'NO'}`)
              return
            }
            if (step.value.index === 0) onFirstToken?.()
            if (!ctx.json) ctx.io.stdout.write(step.value.text)
          }
        }
        await run('pipeline')
        await run('tensor')
        mark('node C will be killed (SIGKILL) as soon as the next job’s first token arrives')
        await run('pipeline', () => agents[2]!.kill('SIGKILL'))

        const ok = figures.every((f) => f.sameAsLlamaCpp) && figures[2]!.failovers > 0
        mark('done; stopping the agents')
        if (ctx.json)
          printJson(ctx.io, { poolId: pool.poolId, model, reference, runs: figures, timeline, ok })
        else {
          say(
            ok
              ? '\nEvery run gave llama.cpp’s tokens, the last one across a member’s death.'
              : '\nA run did not match llama.cpp (see above).',
          )
          if (flags.keep) say(`Data dirs kept in ${root}`)
        }
        if (!ok) process.exitCode = 1
      } finally {
        await stopAll()
        if (!flags.keep) await rm(root, { recursive: true, force: true })
      }
    })
}

function sameTokens(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((t, i) => t === b[i])
}

/** Runs this same `mesh` program (source or built) with other arguments. */
function mesh(args: string[]): Promise<string> {
  return new Promise((resolvePromise, reject) => {
    execFile(
      process.execPath,
      [...process.execArgv, process.argv[1]!, ...args],
      { env: { ...process.env, MESH_LOG: '' }, timeout: 120_000 },
      (error, stdout, stderr) => {
        if (error) reject(new DemoError(`mesh ${args[0]} failed: ${stderr.trim() || error.message}`))
        else resolvePromise(stdout)
      },
    )
  })
}

async function startAgent(dataDir: string, args: string[]): Promise<ChildProcess> {
  const child = spawn(
    process.execPath,
    [...process.execArgv, process.argv[1]!, 'start', '--data-dir', dataDir, ...args],
    {
      env: { ...process.env, MESH_LOG: 'warn' },
      stdio: ['ignore', 'ignore', 'pipe'],
    },
  )
  let stderr = ''
  child.stderr!.on('data', (chunk) => (stderr += chunk))
  for (let i = 0; i < 600; i++) {
    if (child.exitCode !== null) throw new DemoError(`the agent in ${dataDir} exited: ${stderr.trim()}`)
    try {
      await connectAgent(dataDirLayout(dataDir))
      return child
    } catch {
      await new Promise((r) => setTimeout(r, 50))
    }
  }
  child.kill('SIGKILL')
  throw new DemoError(`the agent in ${dataDir} did not start within 30 s`, 'see its log in logs/agent.log')
}

interface RingView {
  epoch: number
  converged: boolean
  /** Every planned member reports its shard loaded. */
  ready: boolean
  members: Array<{
    nodeId: string
    position: number
    shard: {
      layers: [number, number]
      load: 'pending' | 'loading' | 'ready' | 'failed'
      bytes?: number
      error?: string
    } | null
  }>
}

/** Waits until every planned member reports its shard loaded (they load when the ring converges). */
async function waitForReady(agent: AgentClient, poolId: string): Promise<RingView> {
  const deadline = Date.now() + 600_000
  while (Date.now() < deadline) {
    const ring = await agent.request<RingView>('GET', `/rings/${poolId}`).catch(() => undefined)
    if (ring?.ready) return ring
    const failed = ring?.members.find((m) => m.shard?.load === 'failed')
    if (failed) throw new DemoError(`${failed.nodeId} could not load its shard: ${failed.shard?.error}`)
    await new Promise((r) => setTimeout(r, 200))
  }
  throw new DemoError('the members did not load their shards within 10 minutes')
}

async function waitForRing(agent: AgentClient, poolId: string, size: number): Promise<RingView> {
  const deadline = Date.now() + 60_000
  while (Date.now() < deadline) {
    const ring = await agent.request<RingView>('GET', `/rings/${poolId}`).catch(() => undefined)
    if (ring?.converged && ring.members.length === size) return ring
    await new Promise((r) => setTimeout(r, 200))
  }
  throw new DemoError(`the ring did not converge on ${size} members within 60 s`)
}
