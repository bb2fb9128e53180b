import { MeshError, type MeshErrorOptions } from '@meshnet/core'

/**
 * The model cannot run on the Meshnet engine: another architecture than `llama`, a missing or
 * unexpected tensor, mixture-of-experts, rope scaling, a tokenizer other than SentencePiece.
 */
export class UnsupportedModelError extends MeshError {
  override name = 'UnsupportedModelError' as const
  constructor(message: string, options?: MeshErrorOptions) {
    super('ERR_UNSUPPORTED_MODEL', message, options)
  }
}

/** A tensor is stored in a ggml type the Meshnet engine has no kernel or dequantizer for. */
export class UnsupportedTensorTypeError extends MeshError {
  override name = 'UnsupportedTensorTypeError' as const
  constructor(message: string, options?: MeshErrorOptions) {
    super('ERR_UNSUPPORTED_TENSOR_TYPE', message, options)
  }
}

/** A shard's layer range or column slice does not fit the model (out of range, empty, misaligned). */
export class InvalidShardError extends MeshError {
  override name = 'InvalidShardError' as const
  constructor(message: string, options?: MeshErrorOptions) {
    super('ERR_INVALID_SHARD', message, options)
  }
}

/** The tokens of a request do not fit in the context (KV cache) the engine was created with. */
export class ContextOverflowError extends MeshError {
  override name = 'ContextOverflowError' as const
  constructor(message: string, options?: MeshErrorOptions) {
    super('ERR_CONTEXT_OVERFLOW', message, options)
  }
}

/** llama.cpp (through node-llama-cpp) could not load the model or create its context. */
export class ModelLoadError extends MeshError {
  override name = 'ModelLoadError' as const
  constructor(message: string, options?: MeshErrorOptions) {
    super('ERR_MODEL_LOAD', message, options)
  }
}

/** An engine or shard was used after `dispose()`. */
export class EngineDisposedError extends MeshError {
  override name = 'EngineDisposedError' as const
  constructor(message: string, options?: MeshErrorOptions) {
    super('ERR_ENGINE_DISPOSED', message, options)
  }
}
