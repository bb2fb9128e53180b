import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createModel, runMesh } from '@meshnet/test-harness'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

let dir: string
let model: string
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'meshnet-infer-'))
  model = join(dir, 'gqa.gguf')
  await createModel(model, { layers: 2, embd: 256, heads: 4, kvHeads: 2, vocab: 1000, type: 'Q8_0', seed: 3 })
})
afterAll(async () => {
  await rm(dir, { recursive: true, force: true })
})

const infer = async (engine: string, ...extra: string[]) => {
  const result = await runMesh([
    'inference',
    '--local',
    '--model',
    model,
    '--prompt',
    'Hello world',
    '--max-tokens',
    '24',
    '--engine',
    engine,
    '--threads',
    '1',
    '--json',
    ...extra,
  ])
  expect(result.code, result.stderr).toBe(0)
  return JSON.parse(result.stdout) as { tokens: number[]; text: string; timings: Record<string, number> }
}

describe('mesh inference --local', () => {
  it('gives the same greedy tokens on the Meshnet engine as on llama.cpp', async () => {
    const [ours, reference] = [await infer('meshnet'), await infer('llama-cpp')]
    expect(ours.tokens).toHaveLength(24)
    expect(ours.tokens).toEqual(reference.tokens)
    expect(ours.text).toBe(reference.text)
  })

  it('is reproducible with a seed when sampling', async () => {
    const a = await infer('meshnet', '--temperature', '0.8', '--top-k', '40', '--seed', '11')
    const b = await infer('meshnet', '--temperature', '0.8', '--top-k', '40', '--seed', '11')
    expect(a.tokens).toEqual(b.tokens)
  })

  it('sends a job without --local to the agent, and says when none runs', async () => {
    const withModel = await runMesh(['inference', '--model', model, '--prompt', 'x'])
    expect(withModel.code).not.toBe(0)
    expect(withModel.stderr).toMatch(/--model goes with --local/)
    const empty = await mkdtemp(join(tmpdir(), 'meshnet-infer-noagent-'))
    try {
      const noAgent = await runMesh(['inference', '--prompt', 'x', '--data-dir', empty])
      expect(noAgent.code).not.toBe(0)
      expect(noAgent.stderr).toMatch(/no agent is running/)
      expect(noAgent.stderr).toMatch(/mesh start/)
    } finally {
      await rm(empty, { recursive: true, force: true })
    }
  })
})
