import { execFile } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { generateModel } from '@meshnet/gguf'
import { createEngine } from '@meshnet/llama-cpp'
import { type AgentProcess, beaconPort, startAgentProcess } from '@meshnet/test-harness'
import { afterAll, beforeAll, expect, it } from 'vitest'
import { parseChatTemplate } from '../src/agent/chat-template.ts'
import { apiPort } from './mesh-fixture.ts'

const EXAMPLE = join(import.meta.dirname, '..', '..', '..', 'examples', 'openai-client', 'index.ts')
const MAX_TOKENS = 16

let dir: string
let model: string
let agent: AgentProcess | undefined

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'meshnet-openai-client-'))
  model = join(dir, 'tiny.gguf')
  await generateModel({
    out: model,
    layers: 2,
    embd: 256,
    heads: 4,
    kvHeads: 2,
    ff: 512,
    vocab: 1000,
    type: 'Q8_0',
    context: 512,
    seed: 5,
  })
})

afterAll(async () => {
  await agent?.stop()
  await rm(dir, { recursive: true, force: true })
})

/** Waits until the API lists a model (the agent may load it after it starts). */
async function modelListed(base: string): Promise<void> {
  for (let i = 0; i < 300; i++) {
    try {
      const list = (await (await fetch(`${base}/models`)).json()) as { data?: unknown[] }
      if ((list.data?.length ?? 0) > 0) return
    } catch {}
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  throw new Error(`the agent's API at ${base} listed no model within 30 s`)
}

function runExample(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ['--conditions=meshnet-source', EXAMPLE, ...args],
      { env: { ...process.env, OPENAI_BASE_URL: '', OPENAI_API_KEY: '' }, timeout: 60_000 },
      (error, stdout, stderr) => {
        const code = error === null ? 0 : typeof error.code === 'number' ? error.code : 1
        resolve({ code, stdout, stderr })
      },
    )
  })
}

it("streams the agent's greedy answer through the official OpenAI client example", async () => {
  // What the model answers, greedily, to the chat as the plain fallback template renders it (on
  // llama.cpp, which the agent runs a whole model on).
  const prompt = parseChatTemplate(undefined).render({ messages: [{ role: 'user', content: 'Hello world' }] })
  const engine = await createEngine({ engine: 'llama-cpp', modelPath: model, threads: 1 })
  const expected = await engine.generate(prompt, { maxTokens: MAX_TOKENS }).finally(() => engine.dispose())

  agent = await startAgentProcess(join(dir, 'node'), [
    '--local-only',
    '--beacon-port',
    beaconPort(),
    '--model',
    model,
    '--api-port',
    '0',
    '--json',
  ])
  const base = `http://127.0.0.1:${await apiPort(agent)}/v1`
  await modelListed(base)

  const run = await runExample(['--base-url', base, '--max-tokens', String(MAX_TOKENS), 'Hello world'])
  expect(run.code, run.stderr).toBe(0)
  expect(run.stdout).toBe(`${expected.text}\n`)
  expect(run.stderr).toMatch(new RegExp(`\\d+ prompt \\+ ${expected.tokens.length} completion tokens`))
}, 120_000)
