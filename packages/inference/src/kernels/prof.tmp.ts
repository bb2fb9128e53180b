import { createEngine } from '../create-engine.ts'

const e = await createEngine({
  engine: 'meshnet',
  modelPath: `/tmp/kproto/models/m-${process.argv[2] ?? 'Q4_0'}.gguf`,
  threads: 1,
  contextSize: 512,
})
for (let r = 0; r < 4; r++) {
  const res = await e.generate('The quick brown fox', { maxTokens: 64, temperature: 0, stopOnEog: false })
  console.log(res.timings.tokensPerSecond.toFixed(1))
}
await (e as unknown as { dispose(): Promise<void> }).dispose()
