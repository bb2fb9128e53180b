import { expect, it } from 'vitest'

it('exports exactly the public surface', async () => {
  expect(Object.keys(await import('./index.ts')).sort()).toMatchInlineSnapshot(`
    [
      "ContextOverflowError",
      "ENGINE_NAMES",
      "EngineDisposedError",
      "InvalidShardError",
      "KERNEL_TYPES",
      "KernelMemoryError",
      "KernelUnavailableError",
      "ModelLoadError",
      "Mt19937",
      "SUPPORTED_WEIGHT_TYPES",
      "SpmTokenizer",
      "TOKEN_TYPE",
      "UnsupportedModelError",
      "UnsupportedTensorTypeError",
      "argmax",
      "createEngine",
      "createJsKernels",
      "createLlamaCppEngine",
      "createLocalAllReduce",
      "createMeshnetEngine",
      "createSampler",
      "createWasmKernels",
      "generateOptionsSchema",
      "llamaCppEngineOptionsSchema",
      "loadShard",
      "loadShardOptionsSchema",
      "meshnetEngineOptionsSchema",
      "readLlamaConfig",
      "samplingOptionsSchema",
      "spmTokenizerFromGGUF",
    ]
  `)
})
