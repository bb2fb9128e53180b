import { expect, it } from 'vitest'

it('exports exactly the public surface', async () => {
  expect(Object.keys(await import('../src/index.ts')).sort()).toMatchInlineSnapshot(`
    [
      "DEFAULT_GGUF_LIMITS",
      "GGML_TYPE",
      "GGUFFormatError",
      "GGUF_DEFAULT_ALIGNMENT",
      "GGUF_VALUE_TYPE",
      "LLAMA_TOKEN_TYPE",
      "MODEL_ARCHITECTURES",
      "MODEL_MIXES",
      "MODEL_TENSOR_TYPES",
      "MODEL_WEIGHT_TYPES",
      "QK_K",
      "QUANTIZABLE_TYPES",
      "SPM_SPACE",
      "TensorNotFoundError",
      "UnsupportedQuantTypeError",
      "dequantizeRow",
      "findGGMLType",
      "fp16ToFp32",
      "fp32ToFp16",
      "generateModel",
      "ggmlTypeInfo",
      "llamaVocabulary",
      "modelOptionsSchema",
      "openGGUF",
      "quantizeRow",
      "readGGUFHeader",
      "readLlamaHyperparameters",
      "rowByteLength",
      "splitGGUF",
      "writeGGUF",
    ]
  `)
})
