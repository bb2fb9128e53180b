import type { InferenceEngine } from '@meshnet/engine'
import { createEngine, type EngineName } from '@meshnet/llama-cpp'
import { modelInfo } from '../src/agent/model-info.ts'
import type { CompletionBackend, CompletionModel, CompletionOutcome } from '../src/agent/openai-types.ts'

/** A CompletionBackend over real engines, one per model, for the API tests. */
export interface EngineBackend extends CompletionBackend {
  /** How each generation ended, in order. */
  readonly outcomes: CompletionOutcome[]
  engine(model: string): InferenceEngine
  dispose(): Promise<void>
}

/**
 * Loads each model into an engine (one thread) and serves them under their ids. Prompts are
 * tokenized with BOS and with control-token text parsed, as llama.cpp's server does.
 */
export async function engineBackend(
  models: readonly { id: string; modelPath: string; engine?: EngineName }[],
): Promise<EngineBackend> {
  const served = new Map<string, { model: CompletionModel; engine: InferenceEngine }>()
  const dispose = async () => {
    for (const { engine } of served.values()) await engine.dispose()
  }
  try {
    for (const { id, modelPath, engine: name = 'meshnet' } of models) {
      const info = await modelInfo(modelPath)
      const engine = await createEngine({ engine: name, modelPath, threads: 1 })
      served.set(id, {
        model: { id, ownedBy: 'meshnet', contextLength: engine.contextSize, ...info },
        engine,
      })
    }
  } catch (err) {
    await dispose()
    throw err
  }
  const get = (id: string) => {
    const entry = served.get(id)
    if (entry === undefined) throw new Error(`the test backend has no model ${id}`)
    return entry.engine
  }
  const tokenize = (id: string, text: string) =>
    get(id).tokenizer.tokenize(text, { addSpecial: true, parseSpecial: true })
  const outcomes: CompletionOutcome[] = []
  return {
    outcomes,
    engine: get,
    dispose,
    models: () => [...served.values()].map((s) => s.model),
    countTokens: async (model, text) => tokenize(model, text).length,
    async *generate(request) {
      const result = yield* get(request.model).stream(tokenize(request.model, request.prompt), {
        maxTokens: request.maxTokens,
        ...(request.temperature === undefined ? {} : { temperature: request.temperature }),
        ...(request.topP === undefined ? {} : { topP: request.topP }),
        ...(request.topK === undefined ? {} : { topK: request.topK }),
        ...(request.seed === undefined ? {} : { seed: request.seed }),
        signal: request.signal,
      })
      const outcome: CompletionOutcome = {
        promptTokens: result.timings.promptTokens,
        completionTokens: result.tokens.length,
        stopReason: result.stopReason,
      }
      outcomes.push(outcome)
      return outcome
    },
  }
}
