import { type ChildProcess, spawn } from 'node:child_process'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { RingTopology } from '@meshnet/ring'
import type { ShardModelFacts } from '@meshnet/shards'
import {
  type AgentProcess,
  agentRequest,
  beaconPort,
  eventually,
  MESH_BIN,
  runMesh,
  startAgentProcess,
} from '@meshnet/test-harness'
import type { RingStatus } from '../src/agent/ring-part.ts'

export type { RingStatus }

export function ringStatus(dataDir: string, poolId: string): Promise<RingStatus> {
  return agentRequest<RingStatus>(dataDir, `/rings/${poolId}`)
}

/** Waits until every agent reports the same converged ring of `size` members. */
export async function converged(
  dataDirs: string[],
  poolId: string,
  size: number,
  ms?: number,
): Promise<RingStatus[]> {
  return eventually(
    `${dataDirs.length} agents to converge on ${size} members`,
    async () => {
      const views = await Promise.all(dataDirs.map((dir) => ringStatus(dir, poolId)))
      const same = new Set(views.map((v) => `${v.epoch}/${v.digest}`)).size === 1
      return same && views.every((v) => v.converged && v.members.length === size) ? views : undefined
    },
    ms,
  )
}

export async function readTopology(dataDir: string, poolId: string): Promise<RingTopology> {
  return JSON.parse(await readFile(join(dataDir, `ring_topology_${poolId}.json`), 'utf8')) as RingTopology
}

/** llama.cpp's greedy tokens for `prompt` on the whole file, on one node (`mesh inference --local`). */
export async function llamaCppTokens(model: string, prompt: string, maxTokens: number): Promise<number[]> {
  const local = await runMesh([
    'inference',
    '--local',
    '--engine',
    'llama-cpp',
    '--model',
    model,
    '--prompt',
    prompt,
    '--max-tokens',
    String(maxTokens),
    '--threads',
    '1',
    '--json',
  ])
  if (local.code !== 0) throw new Error(`mesh inference --local failed: ${local.stderr}`)
  return (JSON.parse(local.stdout) as { tokens: number[] }).tokens
}

/** A pool made by A, with every other data dir joined over loopback beacons through A's agent. */
export async function poolOf(root: string, names: string[], port: string, agentArgs: string[] = []) {
  const dir = (name: string) => join(root, name)
  const pool = JSON.parse(
    (await runMesh(['pool-create', '--name', 'ring-pool', '--json', '--data-dir', dir(names[0]!)])).stdout,
  ) as {
    poolId: string
    joinToken: string
  }
  const admin = await startAgentProcess(dir(names[0]!), ['--local-only', '--beacon-port', port, ...agentArgs])
  for (const name of names.slice(1)) {
    const joined = await runMesh([
      'pool-join',
      '--token',
      pool.joinToken,
      '--local-only',
      '--beacon-port',
      port,
      '--timeout',
      '30',
      '--data-dir',
      dir(name),
    ])
    if (joined.code !== 0) throw new Error(`join of ${name} failed: ${joined.stderr}`)
  }
  return { pool, admin, dir }
}

/**
 * Three `mesh start` processes A, B and C on loopback, serving `model` with one thread each, in a
 * pool made by A (beacons on a port of their own), converged on one ring.
 */
export async function ringOfThree(
  root: string,
  model: string,
  extraArgs: string[] = [],
): Promise<{
  poolId: string
  dir: (name: string) => string
  agents: Map<string, AgentProcess>
  args: string[]
}> {
  const port = beaconPort()
  const args = [
    '--local-only',
    '--beacon-port',
    port,
    '--beacon-interval',
    '300',
    '--model',
    model,
    '--threads',
    '1',
    ...extraArgs,
  ]
  const made = await poolOf(root, ['A', 'B', 'C'], port, args)
  const agents = new Map<string, AgentProcess>([['A', made.admin]])
  agents.set('B', await startAgentProcess(made.dir('B'), args))
  agents.set('C', await startAgentProcess(made.dir('C'), args))
  const dirs = ['A', 'B', 'C'].map(made.dir)
  await converged(dirs, made.pool.poolId, 3, 60_000)
  return { poolId: made.pool.poolId, dir: made.dir, agents, args }
}

/** Starts `mesh-relay` on loopback and returns its first address. */
export async function startRelay(
  dataDir: string,
): Promise<{ address: string; process: ChildProcess; stop(): Promise<void> }> {
  const bin = join(import.meta.dirname, '..', '..', 'relay', 'src', 'bin.ts')
  const child = spawn(
    process.execPath,
    ['--conditions=meshnet-source', bin, '--port', '0', '--local-only', '--json', '--data-dir', dataDir],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  )
  let out = ''
  child.stdout!.on('data', (c) => (out += c))
  const address = await eventually('the relay to start', async () => {
    const match = /"(\/ip4\/127\.0\.0\.1\/tcp\/\d+\/p2p\/\w+)"/.exec(out)
    return match?.[1]
  })
  return {
    address,
    process: child,
    async stop() {
      if (child.exitCode !== null) return
      child.kill('SIGTERM')
      await new Promise((resolve) => child.once('exit', resolve))
    },
  }
}

/**
 * Streams a job with `mesh inference <args> --data-dir <dataDir>` and SIGKILLs `victim` as soon as
 * the first output arrives, mid-generation. Returns what the command printed and how it exited.
 */
export async function streamAndKill(
  dataDir: string,
  args: readonly string[],
  victim: AgentProcess,
): Promise<{ out: string; err: string; killed: boolean; code: number | null }> {
  const child = spawn(
    process.execPath,
    ['--conditions=meshnet-source', MESH_BIN, 'inference', ...args, '--data-dir', dataDir],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  )
  let out = ''
  let err = ''
  let killed = false
  child.stderr.on('data', (chunk) => (err += chunk))
  child.stdout.on('data', (chunk) => {
    out += chunk
    if (!killed && out.length > 0) {
      killed = true
      void victim.kill()
    }
  })
  const code = await new Promise<number | null>((resolve) => child.on('exit', resolve))
  return { out, err, killed, code }
}

/** MiB to offer so that a member holds `layers` layers, with the ends' tensors and its reserve. */
export function offerFor(facts: ShardModelFacts, layers: number): number {
  const bytes =
    facts.reserveBytes +
    facts.embedBytes +
    facts.headBytes +
    layers * (facts.bytesPerLayer + facts.kvBytesPerLayer) +
    facts.bytesPerLayer / 2
  return Math.ceil(bytes / 2 ** 20)
}

/** The agent's API port, from the `"apiPort"` its --json start event prints. */
export async function apiPort(agent: AgentProcess): Promise<number> {
  return eventually('the agent to print its apiPort', async () => {
    const match = /"apiPort":\s*(\d+)/.exec(agent.output())
    return match === null ? undefined : Number(match[1])
  })
}
