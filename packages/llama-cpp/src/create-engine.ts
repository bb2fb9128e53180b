import { InvalidArgumentError } from '@meshnet/core'
import { createMeshnetEngine, type InferenceEngine } from '@meshnet/engine'
import { createLlamaCppEngine } from './engine.ts'
import { openModelTokenizer } from './tokenizer.ts'

export type EngineName = 'meshnet' | 'llama-cpp'

export const ENGINE_NAMES: readonly EngineName[] = ['meshnet', 'llama-cpp']

/** The options both engines take. */
export interface CreateEngineOptions {
  engine: EngineName
  modelPath: string
  threads?: number
  contextSize?: number
  signal?: AbortSignal
}

/** Loads `modelPath` into the chosen engine (`--engine meshnet|llama-cpp`). */
export async function createEngine(options: CreateEngineOptions): Promise<InferenceEngine> {
  const { engine, ...rest } = options
  if (!ENGINE_NAMES.includes(engine)) {
    throw new InvalidArgumentError(
      `unknown engine ${JSON.stringify(engine)}; use ${ENGINE_NAMES.join(' or ')}`,
    )
  }
  const common = {
    modelPath: rest.modelPath,
    ...(rest.threads === undefined ? {} : { threads: rest.threads }),
    ...(rest.contextSize === undefined ? {} : { contextSize: rest.contextSize }),
    ...(rest.signal ? { signal: rest.signal } : {}),
  }
  return engine === 'llama-cpp'
    ? await createLlamaCppEngine(common)
    : await createMeshnetEngine({ ...common, openTokenizer: openModelTokenizer })
}
