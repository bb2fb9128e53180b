import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { type AgentProcess, createModel, eventually, startAgentProcess } from '@meshnet/test-harness'
import fc from 'fast-check'
import { afterAll, beforeAll, expect, it } from 'vitest'

// A real `mesh start` process takes a few hundred fuzzed bodies on its OpenAI-compatible API:
// arbitrary JSON, a valid request with one field replaced by anything, huge arrays, deep nesting,
// invalid schemas and unknown tools. Each gets an answer in OpenAI's error shape (or, when it
// happens to be valid, a completion), never a 500 or a dropped connection, and the agent goes on
// serving.

const KEY = 'sk-fuzz-test-key'
let root: string
let agent: AgentProcess
let base: string

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'meshnet-api-fuzz-'))
  const model = join(root, 'model.gguf')
  await createModel(model, { layers: 2, embd: 256, heads: 4, vocab: 1000, type: 'Q8_0', seed: 5 })
  agent = await startAgentProcess(join(root, 'A'), [
    '--local-only',
    '--no-beacons',
    '--model',
    model,
    '--threads',
    '1',
    '--api-port',
    '0',
    '--api-key',
    KEY,
    '--json',
  ])
  const port = await eventually(
    'the agent to print its API port',
    () => /"apiPort":\s*(\d+)/.exec(agent.output())?.[1],
  )
  base = `http://127.0.0.1:${port}`
}, 60_000)

afterAll(async () => {
  await agent?.stop()
  await rm(root, { recursive: true, force: true })
})

const VALID_CHAT = { model: 'model.gguf', messages: [{ role: 'user', content: 'Hi' }], max_tokens: 2 }
const VALID_COMPLETION = { model: 'model.gguf', prompt: 'Hi', max_tokens: 2 }

/** What the server answered a body: its status and whether the body had the shape it should. */
async function post(path: string, body: string): Promise<{ status: number; shaped: boolean; text: string }> {
  const response = await fetch(`${base}${path}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' },
    body,
  })
  const text = await response.text()
  let shaped = false
  try {
    const json = JSON.parse(text) as { error?: { message?: unknown; type?: unknown }; choices?: unknown }
    shaped =
      response.status === 200
        ? Array.isArray(json.choices)
        : typeof json.error?.message === 'string' && typeof json.error.type === 'string'
  } catch {
    // A 200 stream is SSE, not JSON.
    shaped = response.status === 200 && text.includes('data: ')
  }
  return { status: response.status, shaped, text: text.slice(0, 300) }
}

function expectRefusedOrServed(answer: { status: number; shaped: boolean; text: string }, what: string) {
  expect([200, 400, 404, 413], `${what}: ${answer.text}`).toContain(answer.status)
  expect(answer.shaped, `${what}: ${answer.text}`).toBe(true)
}

/** A body with one field of a valid request replaced by anything. */
const mutated = (valid: Record<string, unknown>) =>
  fc
    .tuple(
      fc.constantFrom(
        ...Object.keys(valid),
        'tools',
        'tool_choice',
        'response_format',
        'n',
        'logprobs',
        'stream',
        'stop',
        'temperature',
        'seed',
        'x',
      ),
      fc.jsonValue({ maxDepth: 4 }),
    )
    .map(([key, value]) => JSON.stringify({ ...valid, [key]: value }))

it('answers arbitrary and mutated bodies with OpenAI-shaped errors, never a 500, and keeps serving', async () => {
  for (const [path, valid] of [
    ['/v1/chat/completions', VALID_CHAT],
    ['/v1/completions', VALID_COMPLETION],
  ] as const) {
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(
          fc.jsonValue({ maxDepth: 5 }).map((v) => JSON.stringify(v)),
          mutated(valid),
          fc.string({ maxLength: 200 }),
        ),
        async (body) => expectRefusedOrServed(await post(path, body), `${path} ${body.slice(0, 200)}`),
      ),
      { numRuns: 150, seed: 20261207 },
    )
  }
  expect((await post('/v1/chat/completions', JSON.stringify(VALID_CHAT))).status).toBe(200)
}, 120_000)

it('refuses huge arrays, deep nesting, invalid schemas and unknown tools, and keeps serving', async () => {
  const cases: Array<[string, string]> = [
    [
      'a million messages',
      JSON.stringify({
        ...VALID_CHAT,
        messages: Array.from({ length: 100_000 }, () => ({ role: 'user', content: 'x' })),
      }),
    ],
    [
      'deeply nested content',
      `{"model":"model.gguf","max_tokens":2,"messages":[{"role":"user","content":${'['.repeat(5_000)}"x"${']'.repeat(5_000)}}]}`,
    ],
    [
      'nesting past the parser',
      `{"model":"model.gguf","messages":${'['.repeat(400_000)}${']'.repeat(400_000)}}`,
    ],
    [
      'an invalid JSON schema',
      JSON.stringify({
        ...VALID_CHAT,
        response_format: { type: 'json_schema', json_schema: { name: 7, schema: 'not a schema' } },
      }),
    ],
    [
      'an unknown tool choice',
      JSON.stringify({ ...VALID_CHAT, tool_choice: { type: 'function', function: { name: 'nowhere' } } }),
    ],
    [
      'a tool without a name',
      JSON.stringify({ ...VALID_CHAT, tools: [{ type: 'function', function: { parameters: {} } }] }),
    ],
    [
      'a schema keyword the grammar cannot keep to',
      JSON.stringify({
        ...VALID_CHAT,
        response_format: {
          type: 'json_schema',
          json_schema: { name: 'x', schema: { type: 'object', properties: { a: { not: {} } } } },
        },
      }),
    ],
    [
      'a schema no value satisfies',
      JSON.stringify({
        ...VALID_CHAT,
        response_format: { type: 'json_schema', json_schema: { name: 'x', schema: { enum: [] } } },
      }),
    ],
    [
      'a tool whose parameters have an unsupported keyword',
      JSON.stringify({
        ...VALID_CHAT,
        tool_choice: 'required',
        tools: [{ type: 'function', function: { name: 'f', parameters: { type: 'object', allOf: [] } } }],
      }),
    ],
    [
      'two tools of one name',
      JSON.stringify({
        ...VALID_CHAT,
        tools: [
          { type: 'function', function: { name: 'f' } },
          { type: 'function', function: { name: 'f' } },
        ],
      }),
    ],
    [
      'a thousand tools',
      JSON.stringify({
        ...VALID_CHAT,
        tools: Array.from({ length: 1000 }, (_, i) => ({ type: 'function', function: { name: `f${i}` } })),
      }),
    ],
    [
      'a huge stop list',
      JSON.stringify({ ...VALID_CHAT, stop: Array.from({ length: 10_000 }, (_, i) => `s${i}`) }),
    ],
    ['a negative max_tokens', JSON.stringify({ ...VALID_CHAT, max_tokens: -1 })],
    [
      'a body over the cap',
      JSON.stringify({ ...VALID_CHAT, messages: [{ role: 'user', content: 'x'.repeat(2 * 1024 * 1024) }] }),
    ],
  ]
  for (const [what, body] of cases) {
    const answer = await post('/v1/chat/completions', body)
    expect([400, 413], `${what}: ${answer.text}`).toContain(answer.status)
    expect(answer.shaped, `${what}: ${answer.text}`).toBe(true)
  }
  expect((await post('/v1/chat/completions', JSON.stringify(VALID_CHAT))).status).toBe(200)
}, 60_000)
