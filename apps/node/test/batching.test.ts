import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { type AgentProcess, agentRequest, createModel, runMesh } from '@meshnet/test-harness'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ringOfThree, streamAndKill } from './mesh-fixture.ts'

// Continuous batching on a real ring: three `mesh start` processes on loopback run several jobs at
// once as a pipeline, and each member runs the steps of all the jobs' sessions that arrive together
// as one pass over its weights. Every job must get exactly the tokens it gets when it runs alone
// (greedy and seeded sampling), whatever joins or leaves the batch around it, and through a
// failover.

let root: string
let dir: (name: string) => string
const agents = new Map<string, AgentProcess>()

interface Job {
  prompt: string
  maxTokens: number
  temperature?: number
  seed?: number
}

// Different prompt lengths and lengths of output, so that sessions join and leave mid-batch.
const JOBS: Job[] = [
  { prompt: 'The mesh splits the model', maxTokens: 40 },
  {
    prompt: 'Ordinary computers pool their memory and compute to run one',
    maxTokens: 16,
    temperature: 0.8,
    seed: 5,
  },
  { prompt: 'A', maxTokens: 56 },
  {
    prompt: 'Every member holds a few layers and passes the hidden state on',
    maxTokens: 28,
    temperature: 0.7,
    seed: 9,
  },
]

function jobArgs(job: Job): string[] {
  return [
    '--prompt',
    job.prompt,
    '--max-tokens',
    String(job.maxTokens),
    '--mode',
    'pipeline',
    ...(job.temperature === undefined
      ? []
      : ['--temperature', String(job.temperature), '--seed', String(job.seed)]),
  ]
}

async function infer(job: Job): Promise<{ tokens: number[]; text: string; stats: { failovers: number } }> {
  const result = await runMesh(['inference', ...jobArgs(job), '--json', '--data-dir', dir('A')])
  expect(result.code, result.stderr).toBe(0)
  return JSON.parse(result.stdout)
}

interface Batching {
  passes: number
  steps: number
  widest: number
}

async function batching(name: string): Promise<Batching> {
  const status = await agentRequest<{ jobs: { shards: { batching: Batching } } }>(dir(name), '/status')
  return status.jobs.shards.batching
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'meshnet-batching-'))
  const model = join(root, 'model.gguf')
  // Large enough that jobs overlap for a while at one thread per member.
  await createModel(model, {
    layers: 12,
    embd: 768,
    heads: 12,
    kvHeads: 4,
    ff: 2048,
    vocab: 2000,
    type: 'Q8_0',
    seed: 11,
  })
  const ring = await ringOfThree(root, model)
  dir = ring.dir
  for (const [name, agent] of ring.agents) agents.set(name, agent)
}, 120_000)

afterAll(async () => {
  await Promise.all([...agents.values()].map((a) => a.stop()))
  await rm(root, { recursive: true, force: true })
})

describe('continuous batching on a pipeline of three agents', () => {
  let alone: Array<{ tokens: number[]; text: string }>

  it('runs concurrent jobs in shared passes, each with the tokens it gets alone', async () => {
    alone = []
    for (const job of JOBS) alone.push(await infer(job))
    const before = await Promise.all(['B', 'C'].map(batching))
    // Staggered: the later jobs join a batch already decoding.
    const together = await Promise.all(JOBS.map(async (job, i) => sleep(i * 250).then(() => infer(job))))
    for (const [i, job] of together.entries()) {
      expect(job.tokens, `job ${i}`).toEqual(alone[i]!.tokens)
      expect(job.tokens).toHaveLength(JOBS[i]!.maxTokens)
    }
    const after = await Promise.all(['B', 'C'].map(batching))
    for (const [m, stats] of after.entries()) {
      // Fewer passes than steps: steps of several sessions shared passes.
      expect(stats.steps - before[m]!.steps).toBeGreaterThan(stats.passes - before[m]!.passes)
      expect(stats.widest).toBeGreaterThanOrEqual(2)
    }
  }, 180_000)

  it('keeps every job’s tokens when a member is killed mid-batch', async () => {
    const [first, ...rest] = JOBS
    const others = rest.map(async (job, i) => sleep(100 * (i + 1)).then(() => infer(job)))
    const killed = await streamAndKill(dir('A'), jobArgs(first!), agents.get('C')!)
    expect(killed.code, killed.err).toBe(0)
    expect(killed.killed).toBe(true)
    expect(killed.out.trimEnd()).toBe(alone[0]!.text.trimEnd())
    for (const [i, job] of (await Promise.all(others)).entries()) {
      expect(job.tokens, `job ${i + 1}`).toEqual(alone[i + 1]!.tokens)
    }
    const jobs = await agentRequest<{ jobs: Array<{ failovers: number; status: string }> }>(dir('A'), '/jobs')
    expect(jobs.jobs.slice(0, JOBS.length).every((j) => j.status === 'completed')).toBe(true)
    expect(jobs.jobs.slice(0, JOBS.length).some((j) => j.failovers >= 1)).toBe(true)
  }, 180_000)
})
