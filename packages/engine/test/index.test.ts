import { expect, it } from 'vitest'

it('exports exactly the public surface', async () => {
  expect(Object.keys(await import('../src/index.ts')).sort()).toMatchInlineSnapshot(`
    [
      "ContextOverflowError",
      "EngineDisposedError",
      "InvalidShardError",
      "KERNEL_TYPES",
      "KernelMemoryError",
      "KernelUnavailableError",
      "ModelLoadError",
      "Mt19937",
      "SUPPORTED_WEIGHT_TYPES",
      "ShardWeights",
      "SpmTokenizer",
      "TextStreamer",
      "UnsupportedModelError",
      "UnsupportedTensorTypeError",
      "VocabHead",
      "argmax",
      "createJsKernels",
      "createLocalAllReduce",
      "createMeshnetEngine",
      "createSampler",
      "createWasmKernels",
      "estimateWeightBytes",
      "generateOptionsSchema",
      "loadShard",
      "loadShardOptionsSchema",
      "meshnetEngineOptionsSchema",
      "openSpmTokenizer",
      "parseGenerateOptions",
      "readLlamaConfig",
      "resolveSpec",
      "samplingOptionsSchema",
      "sessionBytes",
      "spmTokenizerFromGGUF",
      "vocabSlice",
    ]
  `)
})
