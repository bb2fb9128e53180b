import { silentLogger } from '@meshnet/core'
import type { InferenceEngine, OpenedTokenizer } from '@meshnet/engine'
import { compileGrammar, constraintVocabulary, createTokenConstraint } from '@meshnet/grammar'
import { createEngine, type EngineName, openModelTokenizer } from '@meshnet/llama-cpp'
import OpenAI from 'openai'
import { modelInfo } from '../src/agent/model-info.ts'
import { startOpenAiApi } from '../src/agent/openai-api.ts'
import { describeLogprobs } from '../src/agent/openai-logprobs.ts'
import type {
  CompletionBackend,
  CompletionModel,
  CompletionOutcome,
  CompletionRequest,
  OpenAiApi,
} from '../src/agent/openai-types.ts'

/** A CompletionBackend over real engines, one per model, for the API tests. */
export interface EngineBackend extends CompletionBackend {
  /** How each generation ended, in order. */
  readonly outcomes: CompletionOutcome[]
  /** What each generation was asked, in order. */
  readonly requests: CompletionRequest[]
  engine(model: string): InferenceEngine
  dispose(): Promise<void>
}

/**
 * Loads each model into an engine (one thread) and serves them under their ids. Prompts are
 * tokenized with BOS and with control-token text parsed, as llama.cpp's server does. Tokens of
 * log-probabilities are made text by the model's tokenizer, as the agent's backend does.
 */
export async function engineBackend(
  models: readonly { id: string; modelPath: string; engine?: EngineName; contextSize?: number }[],
): Promise<EngineBackend> {
  const served = new Map<
    string,
    { model: CompletionModel; engine: InferenceEngine; tokenizer: OpenedTokenizer }
  >()
  const dispose = async () => {
    for (const { engine, tokenizer } of served.values()) {
      await engine.dispose()
      await tokenizer.dispose()
    }
  }
  try {
    for (const { id, modelPath, engine: name = 'meshnet', contextSize } of models) {
      const info = await modelInfo(modelPath)
      const engine = await createEngine({
        engine: name,
        modelPath,
        threads: 1,
        ...(contextSize === undefined ? {} : { contextSize }),
      })
      const tokenizer = await openModelTokenizer(modelPath).catch(async (err: unknown) => {
        await engine.dispose()
        throw err
      })
      served.set(id, {
        model: { id, ownedBy: 'meshnet', contextLength: engine.contextSize, ...info },
        engine,
        tokenizer,
      })
    }
  } catch (err) {
    await dispose()
    throw err
  }
  const entry = (id: string) => {
    const found = served.get(id)
    if (found === undefined) throw new Error(`the test backend has no model ${id}`)
    return found
  }
  const get = (id: string) => entry(id).engine
  const tokenize = (id: string, text: string) =>
    get(id).tokenizer.tokenize(text, { addSpecial: true, parseSpecial: true })
  const outcomes: CompletionOutcome[] = []
  const requests: CompletionRequest[] = []
  return {
    outcomes,
    requests,
    engine: get,
    dispose,
    models: () => [...served.values()].map((s) => s.model),
    countTokens: async (model, text) => tokenize(model, text).length,
    async *generate(request) {
      requests.push(request)
      const { tokenizer } = entry(request.model).tokenizer
      const stream = get(request.model).stream(tokenize(request.model, request.prompt), {
        maxTokens: request.maxTokens,
        ...(request.temperature === undefined ? {} : { temperature: request.temperature }),
        ...(request.topP === undefined ? {} : { topP: request.topP }),
        ...(request.topK === undefined ? {} : { topK: request.topK }),
        ...(request.seed === undefined ? {} : { seed: request.seed }),
        ...(request.presencePenalty === undefined ? {} : { presencePenalty: request.presencePenalty }),
        ...(request.frequencyPenalty === undefined ? {} : { frequencyPenalty: request.frequencyPenalty }),
        ...(request.logprobs === undefined ? {} : { logprobs: request.logprobs }),
        ...(request.grammar === undefined
          ? {}
          : {
              constraint: createTokenConstraint(
                compileGrammar(request.grammar),
                constraintVocabulary(tokenizer),
                { maxTokens: request.maxTokens },
              ),
            }),
        signal: request.signal,
      })
      let step = await stream.next()
      try {
        while (!step.done) {
          const { id, text, logprobs } = step.value
          yield {
            id,
            text,
            ...(logprobs === undefined ? {} : { logprobs: describeLogprobs(tokenizer, id, logprobs) }),
          }
          step = await stream.next()
        }
      } finally {
        // Returned early: the engine's generation ends (and frees its sequence) now.
        if (!step.done) await stream.return(undefined as never)
      }
      const result = step.value
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

/** An OpenAI API on 127.0.0.1 over `engineBackend(models)`, with the official client pointed at it. */
export async function apiTestServer(models: Parameters<typeof engineBackend>[0]): Promise<{
  backend: EngineBackend
  api: OpenAiApi
  client: OpenAI
  close(): Promise<void>
}> {
  const backend = await engineBackend(models)
  const api = await startOpenAiApi({ backend, port: 0, logger: silentLogger() }).catch(
    async (err: unknown) => {
      await backend.dispose()
      throw err
    },
  )
  const client = new OpenAI({ baseURL: `http://127.0.0.1:${api.port}/v1`, apiKey: 'unused', maxRetries: 0 })
  return {
    backend,
    api,
    client,
    async close() {
      await api.close()
      await backend.dispose()
    },
  }
}
