// What structured output costs: decode tokens/s of greedy generations constrained to a JSON Schema
// against the same generations unconstrained, on both engines, measured in the same run on a
// generated Q8_0 llama with a 32k vocabulary (8 layers, embd 512: small, so that the constraint's
// own cost shows rather than hides behind the matmuls), one thread. Also the one-off cost of a
// vocabulary's token index and the time of a full mask at a structural point and inside a string.
//
//   node --conditions=meshnet-source bench/structured.bench.ts
//   STRUCTURED_BENCH_ROUNDS=5   rounds per figure (the best round counts)

import { createMeshnetEngine } from '@meshnet/engine'
import {
  compileGrammar,
  constraintVocabulary,
  createTokenConstraint,
  type JsonSchema,
} from '@meshnet/grammar'
import { createLlamaCppEngine } from '@meshnet/llama-cpp'
import { cachedModel, summary, table } from './lib.ts'

const SHAPE = { layers: 8, embd: 512, heads: 8, kvHeads: 4, ff: 1536, vocab: 32000 } as const
const ROUNDS = Number(process.env.STRUCTURED_BENCH_ROUNDS ?? 5)
const TOKENS = 64
const SCHEMA: JsonSchema = {
  type: 'object',
  properties: {
    title: { type: 'string', minLength: 40, maxLength: 200 },
    tags: { type: 'array', items: { type: 'string', maxLength: 16 }, minItems: 2, maxItems: 4 },
    score: { type: 'integer', minimum: 0, maximum: 100 },
    done: { type: 'boolean' },
  },
  required: ['title', 'tags', 'score', 'done'],
  additionalProperties: false,
}

const path = await cachedModel(SHAPE, 'Q8_0', { seed: 9, suffix: 'structured' })
const grammar = compileGrammar({ parts: [{ type: 'json', schema: SCHEMA }] })
const engines = {
  meshnet: await createMeshnetEngine({ modelPath: path, threads: 1, contextSize: 512 }),
  'llama.cpp': await createLlamaCppEngine({ modelPath: path, threads: 1, contextSize: 512 }),
}
try {
  // The one-off index of the vocabulary (built on a constraint's first mask), and one mask each at a
  // structural position (the start: only `{` and whitespace) and inside a string.
  const tokenizer = engines.meshnet.tokenizer
  const vocabulary = constraintVocabulary(tokenizer)
  const first = createTokenConstraint(grammar, vocabulary, { maxTokens: 512 })
  let at = performance.now()
  first.allowedMask()
  const indexMs = performance.now() - at
  const structural: number[] = []
  const inString: number[] = []
  for (let i = 0; i < 20; i++) {
    const c = createTokenConstraint(grammar, vocabulary, { maxTokens: 512 })
    at = performance.now()
    c.allowedMask()
    structural.push(performance.now() - at)
    for (const id of tokenizer.tokenize('{"title": "The', { addSpecial: false })) c.accept(id)
    at = performance.now()
    c.allowedMask()
    inString.push(performance.now() - at)
  }
  console.log(
    `vocabulary ${SHAPE.vocab} tokens: index built in ${indexMs.toFixed(0)} ms (once per model); a full mask ` +
      `takes ${summary(structural).median.toFixed(2)} ms at the start of the JSON, ` +
      `${summary(inString).median.toFixed(2)} ms inside a string (medians of 20)`,
  )

  const rows: Array<Record<string, string | number>> = []
  for (const [name, engine] of Object.entries(engines)) {
    const best = { plain: 0, constrained: 0 }
    for (let round = 0; round < ROUNDS; round++) {
      const prompt = [
        1,
        ...Array.from({ length: 15 }, (_, i) => 300 + ((round * 7919 + i * 104_729) % 31_000)),
      ]
      for (const kind of ['plain', 'constrained'] as const) {
        const stamps: number[] = []
        await engine.generate(prompt, {
          maxTokens: TOKENS,
          stopOnEog: kind === 'constrained',
          ...(kind === 'constrained'
            ? { constraint: createTokenConstraint(grammar, vocabulary, { maxTokens: TOKENS }) }
            : {}),
          onToken: () => stamps.push(performance.now()),
        })
        const steps = stamps.slice(1).map((t, i) => t - stamps[i]!)
        if (steps.length > 0) best[kind] = Math.max(best[kind], 1000 / summary(steps).median)
      }
    }
    rows.push({
      engine: name,
      'plain tok/s': best.plain,
      'json_schema tok/s': best.constrained,
      'constrained / plain': best.constrained / best.plain,
    })
  }
  table(rows)
  console.log(
    'A constrained step draws as an unconstrained one and checks the drawn token against the grammar (a ' +
      'walk of its bytes); only a refused token costs a full mask. On llama.cpp a constrained step also ' +
      'copies the whole row of logits out (the draw is then the Meshnet sampler, bit-compatible with llama.cpp’s).',
  )
} finally {
  for (const engine of Object.values(engines)) await engine.dispose()
}
