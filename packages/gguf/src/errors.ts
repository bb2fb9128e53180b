import { MeshError, type MeshErrorOptions } from '@meshnet/core'

/**
 * A GGUF file is corrupt, truncated, hostile or in a form this reader does not support. The message
 * names the file, the byte offset and the problem; `details` holds `{ file, offset }`.
 */
export class GGUFFormatError extends MeshError {
  override name = 'GGUFFormatError' as const
  constructor(message: string, options?: MeshErrorOptions) {
    super('ERR_GGUF_FORMAT', message, options)
  }
}

/** A valid ggml type that this package cannot quantize or dequantize (e.g. IQ2_XS, TQ1_0). */
export class UnsupportedQuantTypeError extends MeshError {
  override name = 'UnsupportedQuantTypeError' as const
  constructor(message: string, options?: MeshErrorOptions) {
    super('ERR_UNSUPPORTED_QUANT_TYPE', message, options)
  }
}

/** A tensor asked for by name is not in the GGUF file. */
export class TensorNotFoundError extends MeshError {
  override name = 'TensorNotFoundError' as const
  constructor(message: string, options?: MeshErrorOptions) {
    super('ERR_TENSOR_NOT_FOUND', message, options)
  }
}
