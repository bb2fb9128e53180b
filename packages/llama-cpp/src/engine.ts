import { InvalidArgumentError, parseWith } from '@meshnet/core'
import {
  ContextOverflowError,
  EngineDisposedError,
  type EvaluateLogitsOptions,
  type GeneratedToken,
  type GenerateOptions,
  type GenerateResult,
  type InferenceEngine,
  ModelLoadError,
  parseGenerateOptions,
  type StopReason,
  TextStreamer,
} from '@meshnet/engine'
import type { LlamaContext, LlamaContextSequence, LlamaModel, Token } from 'node-llama-cpp'
import { z } from 'zod'
import { acquireLlama, type LlamaRuntime } from './runtime.ts'
import { LlamaCppTokenizer } from './tokenizer.ts'

export const llamaCppEngineOptionsSchema = z.strictObject({
  /** A GGUF file on disk. */
  modelPath: z.string().min(1),
  /** CPU threads for evaluation; default: the machine's math cores. */
  threads: z.number().int().min(1).max(1024).optional(),
  /** Tokens of context (KV cache). Default: the model's training context, at most 4096. */
  contextSize: z.number().int().min(16).max(1_048_576).optional(),
  /** Tokens per prompt batch. Default 512 (or the context size when smaller). */
  batchSize: z.number().int().min(1).max(65_536).optional(),
  /**
   * llama.cpp's flash attention. Default false: the classic attention path, which is what the
   * Meshnet engine computes.
   */
  flashAttention: z.boolean().default(false),
  /**
   * Sequences generated at once (default 1): concurrent `stream`/`generate` calls each get a
   * sequence of the context (`contextSize` tokens each) and llama.cpp decodes them in one batch;
   * more calls wait for a sequence to come free.
   */
  parallel: z.number().int().min(1).max(256).default(1),
})

export type LlamaCppEngineOptions = z.input<typeof llamaCppEngineOptionsSchema> & { signal?: AbortSignal }

/** The llama.cpp engine: node-llama-cpp on the CPU, `parallel` sequences decoded together. */
export interface LlamaCppEngine extends InferenceEngine {
  readonly engine: 'llama-cpp'
  readonly threads: number
  /** ggml type names of the KV cache llama.cpp allocated (F16 unless configured otherwise). */
  readonly kvCacheType: { key: string; value: string }
  readonly flashAttention: boolean
}

/** Loads a GGUF model into llama.cpp and creates its context. */
export async function createLlamaCppEngine(options: LlamaCppEngineOptions): Promise<LlamaCppEngine> {
  const { signal, ...rest } = options
  const parsed = parseWith(llamaCppEngineOptionsSchema, rest, 'llama-cpp engine option')
  const opts = parsed
  const runtime = await acquireLlama()
  let model: LlamaModel | undefined
  try {
    model = await runtime.llama.loadModel({
      modelPath: opts.modelPath,
      gpuLayers: 0,
      ...(signal ? { loadSignal: signal } : {}),
    })
    const contextSize = opts.contextSize ?? Math.min(model.trainContextSize, 4096)
    const context = await model.createContext({
      contextSize,
      sequences: opts.parallel,
      flashAttention: opts.flashAttention,
      failedCreationRemedy: false,
      ...(opts.threads === undefined ? {} : { threads: opts.threads }),
      ...(opts.batchSize === undefined ? {} : { batchSize: opts.batchSize }),
      ...(signal ? { createSignal: signal } : {}),
    })
    return new LlamaCppEngineImpl(runtime, model, context)
  } catch (err) {
    await model?.dispose()
    await runtime.release()
    if (err instanceof Error && (err.name === 'AbortError' || signal?.aborted)) throw err
    throw new ModelLoadError(`llama.cpp could not load ${opts.modelPath}: ${(err as Error).message}`, {
      cause: err,
      hint: 'check that the file is a complete GGUF model and that there is enough memory',
    })
  }
}

const GGML_TYPE_NAMES: Record<number, string> = { 0: 'F32', 1: 'F16', 8: 'Q8_0', 2: 'Q4_0', 30: 'BF16' }

class LlamaCppEngineImpl implements LlamaCppEngine {
  readonly engine = 'llama-cpp' as const
  readonly tokenizer: LlamaCppTokenizer
  readonly contextSize: number
  readonly threads: number
  readonly kvCacheType: { key: string; value: string }
  readonly flashAttention: boolean
  readonly #runtime: LlamaRuntime
  readonly #model: LlamaModel
  readonly #context: LlamaContext
  /** Sequences no call holds, and the calls waiting for one, first come first served. */
  readonly #free: LlamaContextSequence[] = []
  readonly #waiting: Array<(sequence: LlamaContextSequence) => void> = []
  #held = 0
  #drained: (() => void) | undefined
  #disposed = false

  constructor(runtime: LlamaRuntime, model: LlamaModel, context: LlamaContext) {
    this.#runtime = runtime
    this.#model = model
    this.#context = context
    for (let i = 0; i < context.totalSequences; i++) this.#free.push(context.getSequence())
    const vocab = model.fileInfo.metadata?.tokenizer?.ggml?.tokens?.length ?? 0
    this.tokenizer = new LlamaCppTokenizer(model, vocab)
    this.contextSize = context.contextSize
    this.threads = context.currentThreads
    const name = (t: number) => GGML_TYPE_NAMES[t] ?? `ggml type ${t}`
    this.kvCacheType = {
      key: name(Number(model.defaultContextKvCacheKeyType)),
      value: name(Number(model.defaultContextKvCacheValueType)),
    }
    this.flashAttention = context.flashAttention === true
  }

  async *stream(
    prompt: string | readonly number[],
    options: GenerateOptions = {},
  ): AsyncGenerator<GeneratedToken, GenerateResult> {
    const opts = parseGenerateOptions(options)
    const { sequence, release } = await this.#acquire()
    try {
      this.#assertOpen()
      const promptTokens = this.#promptTokens(prompt)
      await sequence.clearHistory()
      const seed = opts.seed ?? Math.floor(Date.now() / 1000) >>> 0
      const sampling =
        opts.temperature > 0
          ? { temperature: opts.temperature, topK: opts.topK, topP: opts.topP, seed }
          : { temperature: 0 }
      const streamer = new TextStreamer(this.tokenizer, promptTokens)
      const tokens: number[] = []
      let stopReason: StopReason = 'maxTokens'
      const start = performance.now()
      let first: number | undefined
      let last = start
      if (options.signal?.aborted) stopReason = 'abort'
      else {
        for await (const token of sequence.evaluate(promptTokens as Token[], {
          ...sampling,
          yieldEogToken: true,
        })) {
          last = performance.now()
          first ??= last
          if (options.signal?.aborted) {
            stopReason = 'abort'
            break
          }
          if (opts.stopOnEog && this.tokenizer.isEog(token)) {
            stopReason = 'eog'
            break
          }
          tokens.push(token)
          const piece: GeneratedToken = { id: token, text: streamer.push(token) }
          options.onToken?.(piece)
          yield piece
          if (options.signal?.aborted) {
            stopReason = 'abort'
            break
          }
          if (tokens.length >= opts.maxTokens) break
          if (promptTokens.length + tokens.length >= this.contextSize) {
            stopReason = 'contextFull'
            break
          }
        }
      }
      const tail = streamer.flush()
      if (tail !== '') {
        const piece = { id: tokens.at(-1) ?? -1, text: tail, textOnly: true as const }
        options.onToken?.(piece)
        yield piece
      }
      const promptMs = (first ?? last) - start
      const generateMs = first === undefined ? 0 : last - first
      return {
        tokens,
        text: streamer.text,
        stopReason,
        timings: {
          promptTokens: promptTokens.length,
          promptMs,
          generatedTokens: tokens.length,
          generateMs,
          tokensPerSecond: generateMs > 0 ? ((tokens.length - 1) * 1000) / generateMs : 0,
        },
      }
    } finally {
      release()
    }
  }

  async generate(prompt: string | readonly number[], options: GenerateOptions = {}): Promise<GenerateResult> {
    const it = this.stream(prompt, options)
    for (;;) {
      const step = await it.next()
      if (step.done) return step.value
    }
  }

  async evaluateLogits(
    tokens: readonly number[],
    options: EvaluateLogitsOptions = {},
  ): Promise<Float32Array[]> {
    const { sequence, release } = await this.#acquire()
    try {
      this.#assertOpen()
      options.signal?.throwIfAborted()
      if (tokens.length === 0) return []
      this.#checkFits(tokens.length)
      await sequence.clearHistory()
      const vocab = this.tokenizer.vocabSize
      const rows: Float32Array[] = []
      const evaluate = async (batch: readonly number[]) => {
        options.signal?.throwIfAborted()
        const outputs = await sequence.controlledEvaluate(
          batch.map((t) => [t as Token, { generateNext: { logits: true } }] as const),
        )
        for (let i = 0; i < batch.length; i++) {
          const row = new Float32Array(vocab)
          for (const [token, logit] of outputs[i]?.next.logits ?? []) row[token] = logit
          rows.push(row)
        }
      }
      const split = Math.max(1, Math.min(tokens.length, options.decodeFrom ?? tokens.length))
      await evaluate(tokens.slice(0, split))
      for (const token of tokens.slice(split)) await evaluate([token])
      return rows
    } finally {
      release()
    }
  }

  async dispose(): Promise<void> {
    if (this.#disposed) return
    this.#disposed = true
    if (this.#held > 0) await new Promise<void>((resolve) => (this.#drained = resolve))
    await this.#context.dispose()
    await this.#model.dispose()
    await this.#runtime.release()
  }

  #promptTokens(prompt: string | readonly number[]): number[] {
    const tokens =
      typeof prompt === 'string' ? this.tokenizer.tokenize(prompt, { addSpecial: true }) : [...prompt]
    if (tokens.length === 0) throw new InvalidArgumentError('the prompt is empty (no tokens to evaluate)')
    for (const t of tokens) {
      if (!Number.isInteger(t) || t < 0 || t >= this.tokenizer.vocabSize) {
        throw new InvalidArgumentError(
          `token id ${t} is outside the vocabulary (0..${this.tokenizer.vocabSize - 1})`,
        )
      }
    }
    this.#checkFits(tokens.length + 1)
    return tokens
  }

  #checkFits(n: number): void {
    if (n > this.contextSize) {
      throw new ContextOverflowError(`${n} tokens do not fit in the context of ${this.contextSize} tokens`, {
        hint: 'shorten the prompt or create the engine with a larger contextSize',
      })
    }
  }

  #assertOpen(): void {
    if (this.#disposed) throw new EngineDisposedError('the llama-cpp engine was disposed')
  }

  /** A free sequence (waiting for one when all are held), and its release. */
  async #acquire(): Promise<{ sequence: LlamaContextSequence; release: () => void }> {
    this.#assertOpen()
    const sequence =
      this.#free.pop() ?? (await new Promise<LlamaContextSequence>((resolve) => this.#waiting.push(resolve)))
    this.#held++
    let released = false
    const release = () => {
      if (released) return
      released = true
      this.#held--
      const next = this.#waiting.shift()
      if (next) next(sequence)
      else this.#free.push(sequence)
      if (this.#held === 0) this.#drained?.()
    }
    return { sequence, release }
  }
}
