import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createMeshnetEngine } from '@meshnet/engine'
import { createLlamaCppEngine, openModelTokenizer } from '@meshnet/llama-cpp'
import { readShardModelFacts, type ShardModelFacts } from '@meshnet/shards'
import {
  type AgentProcess,
  agentRequest,
  beaconPort,
  createModel,
  eventually,
  startAgentProcess,
} from '@meshnet/test-harness'
import { Ollama } from 'ollama'
import OpenAI from 'openai'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { apiPort, converged, offerFor, poolOf, ringStatus } from './mesh-fixture.ts'

// Embeddings from real `mesh start` agents through the official OpenAI and Ollama clients: one agent
// that runs the whole model on its own llama.cpp, and a ring of two whose members each offer too
// little memory for the model, so the embedding runs as a pipeline over them (the last member
// pools). The ring's vectors must be the Meshnet engine's own whole-model vectors bit for bit (f32
// activations on the links), and point where llama.cpp's do.

const SHAPE = {
  layers: 8,
  embd: 256,
  heads: 8,
  kvHeads: 4,
  ff: 768,
  vocab: 2000,
  context: 512,
  type: 'Q8_0',
  seed: 13,
} as const
const TEXTS = [
  'A ring of laptops holds the model',
  'Ordinary computers pool their memory',
  'A ring of laptops holds the model',
]

let root: string
let model: string
let facts: ShardModelFacts
const agents: AgentProcess[] = []
let single: { url: string; dataDir: string }
let ring: { url: string; dataDir: string }
/** The Meshnet engine's and llama.cpp's whole-model vectors of TEXTS (tokens as the agents make them). */
let meshnetVectors: Float32Array[]
let llamaVectors: Float32Array[]

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'meshnet-embeddings-'))
  model = join(root, 'model.gguf')
  await createModel(model, SHAPE)
  facts = await readShardModelFacts(model)
  const opened = await openModelTokenizer(model)
  const tokens = TEXTS.map((t) => opened.tokenizer.tokenize(t, { addSpecial: true }))
  await opened.dispose()
  const meshnet = await createMeshnetEngine({ modelPath: model, threads: 1 })
  meshnetVectors = await meshnet.embed(tokens).finally(() => meshnet.dispose())
  const llama = await createLlamaCppEngine({ modelPath: model, threads: 1 })
  llamaVectors = await llama.embed(tokens).finally(() => llama.dispose())

  const common = ['--beacon-interval', '300', '--model', model, '--threads', '1']
  const api = ['--api-port', '0', '--json']
  const port = beaconPort()
  // Room for five of the eight layers each: no member can hold the model, two together can.
  const memory = ['--memory', String(offerFor(facts, 5))]
  const made = await poolOf(root, ['A', 'B'], port, [...common, ...memory, ...api])
  agents.push(made.admin)
  agents.push(
    await startAgentProcess(made.dir('B'), ['--local-only', '--beacon-port', port, ...common, ...memory]),
  )
  const alone = await startAgentProcess(join(root, 'S'), [
    '--local-only',
    '--beacon-port',
    beaconPort(),
    ...common,
    ...api,
  ])
  agents.push(alone)
  single = { url: `http://127.0.0.1:${await apiPort(alone)}`, dataDir: join(root, 'S') }
  ring = { url: `http://127.0.0.1:${await apiPort(made.admin)}`, dataDir: made.dir('A') }
  await converged([made.dir('A'), made.dir('B')], made.pool.poolId, 2, 30_000)
  await eventually(
    'both members to load their shard',
    async () => ((await ringStatus(made.dir('A'), made.pool.poolId)).ready ? true : undefined),
    60_000,
  )
  for (const { url } of [single, ring]) {
    const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'none', maxRetries: 0 })
    await eventually('the API to list the model', async () =>
      (await client.models.list()).data.length > 0 ? true : undefined,
    )
  }
}, 180_000)

afterAll(async () => {
  await Promise.all(agents.splice(0).map((a) => a.stop()))
  if (root !== undefined) await rm(root, { recursive: true, force: true })
})

function cosine(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let dot = 0
  let na = 0
  let nb = 0
  for (let i = 0; i < a.length; i++) {
    dot += a[i]! * b[i]!
    na += a[i]! * a[i]!
    nb += b[i]! * b[i]!
  }
  return dot / Math.sqrt(na * nb)
}

const norm = (v: readonly number[]) => Math.sqrt(v.reduce((sum, x) => sum + x * x, 0))

/** The vectors of TEXTS through both clients and both encodings; they must all agree. */
async function vectors(url: string): Promise<number[][]> {
  const openai = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'none', maxRetries: 0 })
  const id = (await openai.models.list()).data[0]!.id
  const floats = await openai.embeddings.create({ model: id, input: TEXTS, encoding_format: 'float' })
  expect(floats.data.map((d) => d.index)).toEqual([0, 1, 2])
  expect(floats.usage.prompt_tokens).toBeGreaterThan(TEXTS.length)
  const vs = floats.data.map((d) => d.embedding)
  // The client's default: base64 on the wire, decoded to the same floats.
  const decoded = await openai.embeddings.create({ model: id, input: TEXTS })
  expect(decoded.data.map((d) => d.embedding)).toEqual(vs)
  const one = await openai.embeddings.create({ model: id, input: TEXTS[1]!, encoding_format: 'float' })
  expect(one.data[0]!.embedding).toEqual(vs[1])
  const ollama = await new Ollama({ host: url }).embed({ model: id, input: TEXTS })
  expect(ollama.embeddings).toEqual(vs)
  expect(ollama.prompt_eval_count).toBe(floats.usage.prompt_tokens)
  return vs
}

/** The mode of the last job the agent ran. */
async function lastJobMode(dataDir: string): Promise<string> {
  const { jobs } = await agentRequest<{ jobs: Array<{ mode: string; status: string }> }>(dataDir, '/jobs')
  expect(jobs[0]!.status).toBe('completed')
  return jobs[0]!.mode
}

describe('embeddings from mesh start agents', () => {
  it('one agent: llama.cpp’s unit vectors of the model’s width, the same for the same text', async () => {
    const vs = await vectors(single.url)
    expect(await lastJobMode(single.dataDir)).toBe('single')
    for (const [i, v] of vs.entries()) {
      expect(v).toHaveLength(SHAPE.embd)
      expect(norm(v)).toBeCloseTo(1, 5)
      expect(v).toEqual([...llamaVectors[i]!])
    }
    expect(vs[2]).toEqual(vs[0])
    expect(cosine(vs[0]!, vs[1]!)).toBeLessThan(0.999)
  }, 60_000)

  it('a ring of two: the Meshnet engine’s whole-model vectors bit for bit, and llama.cpp’s direction', async () => {
    const vs = await vectors(ring.url)
    expect(await lastJobMode(ring.dataDir)).toBe('pipeline')
    for (const [i, v] of vs.entries()) {
      expect(v).toHaveLength(SHAPE.embd)
      expect(v).toEqual([...meshnetVectors[i]!])
      expect(cosine(v, llamaVectors[i]!)).toBeGreaterThan(0.999)
    }
    expect(vs[2]).toEqual(vs[0])
    expect(cosine(vs[0]!, vs[1]!)).toBeLessThan(0.999)
  }, 120_000)

  it('bad bodies get 400s in each API’s shape, and the agents go on serving', async () => {
    for (const { url } of [single, ring]) {
      const post = async (path: string, body: unknown) => {
        const res = await fetch(`${url}${path}`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify(body),
        })
        return { status: res.status, body: (await res.json()) as { error: unknown } }
      }
      const id = (await (await fetch(`${url}/v1/models`)).json()) as { data: Array<{ id: string }> }
      const name = id.data[0]!.id
      const tokens = await post('/v1/embeddings', { model: name, input: [[1, 2, 3]] })
      expect(tokens.status).toBe(400)
      expect(tokens.body.error).toMatchObject({
        param: 'input',
        message: expect.stringMatching(/token arrays/),
      })
      const long = await post('/v1/embeddings', { model: name, input: 'word '.repeat(2000) })
      expect(long.status).toBe(400)
      expect(long.body.error).toMatchObject({ code: 'context_length_exceeded' })
      const dims = await post('/api/embed', { model: name, input: 'x', dimensions: 3 })
      expect(dims.status).toBe(400)
      expect(typeof dims.body.error).toBe('string')
      // Ollama truncates by default: the same long text is embedded.
      const cut = (await post('/api/embed', { model: name, input: 'word '.repeat(2000) })) as unknown as {
        status: number
        body: { embeddings: number[][] }
      }
      expect(cut.status).toBe(200)
      expect(cut.body.embeddings[0]).toHaveLength(SHAPE.embd)
      const again = await new OpenAI({
        baseURL: `${url}/v1`,
        apiKey: 'none',
        maxRetries: 0,
      }).embeddings.create({
        model: name,
        input: TEXTS[0]!,
      })
      expect(again.data[0]!.embedding).toHaveLength(SHAPE.embd)
    }
  }, 120_000)
})
