import { createEngine } from '../create-engine.ts'

const type = process.argv[2] ?? 'Q8_0'
for (const engine of ['llama-cpp', 'meshnet'] as const) {
  const e = await createEngine({
    engine,
    modelPath: `/tmp/kproto/models/m-${type}.gguf`,
    threads: 1,
    contextSize: 512,
  })
  let best = 0
  for (let r = 0; r < 3; r++) {
    const res = await e.generate('The quick brown fox', { maxTokens: 64, temperature: 0, stopOnEog: false })
    best = Math.max(best, res.timings.tokensPerSecond)
  }
  console.log(type, engine, 'decode tok/s (best of 3)', best.toFixed(1))
  await (e as unknown as { dispose(): Promise<void> }).dispose()
}
