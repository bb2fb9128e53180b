import { InvalidArgumentError, parseWith } from '@meshnet/core'
import {
  ContextOverflowError,
  createSampler,
  type EmbeddingPooling,
  type EmbedOptions,
  EngineDisposedError,
  type EvaluateLogitsOptions,
  type GeneratedToken,
  type GenerateOptions,
  type GenerateResult,
  type InferenceEngine,
  l2Normalize,
  ModelLoadError,
  parseGenerateOptions,
  randomSeed,
  readEmbeddingPooling,
  type StopReason,
  TextStreamer,
  type TokenConstraint,
  type TokenLogprobs,
  UnsupportedModelError,
} from '@meshnet/engine'
import { openGGUF } from '@meshnet/gguf'
import type {
  LlamaContext,
  LlamaContextSequence,
  LlamaEmbeddingContext,
  LlamaModel,
  LlamaModelOptions,
  Token,
} from 'node-llama-cpp'
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
  /**
   * How `embed` pools: the GGUF's `<arch>.pooling_type`, or mean when it says none (the model is
   * then loaded with that key overridden, which only embedding contexts read). Undefined: the model
   * makes no embeddings (a reranker).
   */
  readonly embeddingPooling: EmbeddingPooling | undefined
}

/** Loads a GGUF model into llama.cpp and creates its context. */
export async function createLlamaCppEngine(options: LlamaCppEngineOptions): Promise<LlamaCppEngine> {
  const { signal, ...rest } = options
  const parsed = parseWith(llamaCppEngineOptionsSchema, rest, 'llama-cpp engine option')
  const opts = parsed
  const { pooling, overrides } = await embeddingSetup(opts.modelPath)
  const runtime = await acquireLlama()
  let model: LlamaModel | undefined
  try {
    model = await runtime.llama.loadModel({
      modelPath: opts.modelPath,
      gpuLayers: 0,
      ...(overrides === undefined ? {} : { metadataOverrides: overrides }),
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
    return new LlamaCppEngineImpl(runtime, model, context, { pooling, threads: opts.threads })
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

/**
 * The pooling `embed` uses, and the metadata override that makes llama.cpp's embedding context pool
 * by the mean when the GGUF names no pooling (llama.cpp then returns the last position's state).
 * Only contexts made for embeddings read `<arch>.pooling_type`, so generation is unchanged.
 */
async function embeddingSetup(path: string): Promise<{
  pooling: EmbeddingPooling | undefined
  overrides: LlamaModelOptions['metadataOverrides'] | undefined
}> {
  let file: Awaited<ReturnType<typeof openGGUF>>
  try {
    file = await openGGUF(path)
  } catch {
    // Not a GGUF we read: llama.cpp's own load reports what is wrong with it.
    return { pooling: undefined, overrides: undefined }
  }
  try {
    const { pooling, declared } = readEmbeddingPooling(file)
    const arch = file.getString('general.architecture')
    if (declared || arch === undefined) return { pooling, overrides: undefined }
    // llama.cpp's LLAMA_POOLING_TYPE_MEAN; node-llama-cpp types this key as a const enum.
    const overrides = { [arch]: { pooling_type: 1 } } as LlamaModelOptions['metadataOverrides']
    return { pooling, overrides }
  } finally {
    await file.close()
  }
}

type SequenceEvaluateOptions = NonNullable<Parameters<LlamaContextSequence['evaluate']>[1]>
type RepeatPenalty = NonNullable<SequenceEvaluateOptions['repeatPenalty']>

/** Tokens as llama.cpp's own sampler chain picks them (`sequence.evaluate`), EOG included. */
async function* nativelySampled(
  sequence: LlamaContextSequence,
  prompt: readonly number[],
  sampling: SequenceEvaluateOptions,
): AsyncGenerator<{ id: number; logprobs?: TokenLogprobs }> {
  for await (const id of sequence.evaluate(prompt as Token[], { ...sampling, yieldEogToken: true })) {
    yield { id }
  }
}

/**
 * Tokens with their log-probabilities (or under a constraint). llama.cpp evaluates each position with a greedy chain after
 * the penalties, so the logits it returns (the best `wanted`) and their total weight are those of the
 * penalized whole row; the draw is `createSampler`'s over those candidates (bit-compatible with
 * llama.cpp's chain, and its random state lasts the whole generation where every
 * `controlledEvaluate` makes a new native sampler). Candidates: the top k (k = 0: the whole
 * vocabulary), at least the `top` alternatives asked for.
 */
async function* sampledWithLogprobs(
  sequence: LlamaContextSequence,
  prompt: readonly number[],
  opts: {
    temperature: number
    topK: number
    topP: number
    seed: number
    top: number
    vocab: number
    repeatPenalty: RepeatPenalty | undefined
    constraint: TokenConstraint | undefined
  },
): AsyncGenerator<{ id: number; logprobs: TokenLogprobs }> {
  const sampler = createSampler(
    { temperature: opts.temperature, topK: opts.topK, topP: opts.topP, seed: opts.seed },
    opts.constraint === undefined ? {} : { constraint: opts.constraint },
  )
  // Greedy under a constraint: the likeliest candidates, and the allowed tokens by id when they
  // are few (a structural point of a JSON text); when many are allowed and none of the candidates
  // is, the whole row once more. Sampling under a constraint draws from the whole row, as the ring's
  // coordinator does, so that a seed draws the same tokens on both.
  const greedyConstrained = opts.constraint !== undefined && opts.temperature <= 0
  const drawn = greedyConstrained
    ? GREEDY_CANDIDATES
    : opts.constraint !== undefined
      ? opts.vocab
      : opts.temperature <= 0
        ? 1
        : opts.topK > 0
          ? opts.topK
          : opts.vocab
  const wanted = Math.min(opts.vocab, Math.max(1, opts.top, drawn))
  const options = {
    temperature: 0,
    ...(opts.repeatPenalty === undefined ? {} : { repeatPenalty: opts.repeatPenalty }),
  }
  const candidates = (tokens: number[]) => ({
    logits: { filter: { tokens: tokens as Token[], includeTop: wanted } },
    totalLogitWeight: true,
    options,
  })
  const wholeRow = { logits: true as const, totalLogitWeight: true, options }
  const evaluate = async (
    input: readonly Token[],
    generateNext: typeof wholeRow | ReturnType<typeof candidates>,
  ) => {
    const at = input.length - 1
    const outputs = await sequence.controlledEvaluate(
      input.map((token, i) => (i === at ? ([token, { generateNext }] as const) : token)),
    )
    const next = outputs[at]?.next
    if (next?.logits === undefined || next.totalLogitWeight === undefined) {
      throw new Error('llama.cpp returned no logits for the next token')
    }
    return { logits: next.logits, totalLogitWeight: next.totalLogitWeight }
  }
  let input = prompt as Token[]
  for (;;) {
    const few = greedyConstrained ? opts.constraint!.allowedIds?.(FEW_ALLOWED) : undefined
    let next = await evaluate(input, candidates(few ?? []))
    if (
      greedyConstrained &&
      few === undefined &&
      ![...next.logits.keys()].some((t) => opts.constraint!.allows(t))
    ) {
      const end = sequence.nextTokenIndex
      await sequence.eraseContextTokenRanges([{ start: end - 1, end }])
      next = await evaluate([input.at(-1)!], wholeRow)
    }
    const row = new Float32Array(opts.vocab).fill(Number.NEGATIVE_INFINITY)
    let max = Number.NEGATIVE_INFINITY
    for (const [token, logit] of next.logits) {
      row[token] = logit
      if (logit > max) max = logit
    }
    // totalLogitWeight = Σ exp(logit - max) over the penalized row.
    const picked = sampler.sampleWithLogprobs(row, {
      top: opts.top,
      logSumExp: max + Math.log(next.totalLogitWeight),
    })
    yield picked
    input = [picked.id as Token]
  }
}

/** Candidates a greedy constrained step asks llama.cpp for. */
const GREEDY_CANDIDATES = 32
/** Allowed tokens few enough to ask llama.cpp for by id. */
const FEW_ALLOWED = 512

/** Positions of the first embedding context; it grows (doubling) up to the engine's context. */
const FIRST_EMBEDDING_CONTEXT = 256

const GGML_TYPE_NAMES: Record<number, string> = { 0: 'F32', 1: 'F16', 8: 'Q8_0', 2: 'Q4_0', 30: 'BF16' }

class LlamaCppEngineImpl implements LlamaCppEngine {
  readonly engine = 'llama-cpp' as const
  readonly tokenizer: LlamaCppTokenizer
  readonly contextSize: number
  readonly threads: number
  readonly kvCacheType: { key: string; value: string }
  readonly flashAttention: boolean
  readonly embeddingPooling: EmbeddingPooling | undefined
  readonly #runtime: LlamaRuntime
  readonly #model: LlamaModel
  readonly #context: LlamaContext
  /** Sequences no call holds, and the calls waiting for one, first come first served. */
  readonly #free: LlamaContextSequence[] = []
  readonly #waiting: Array<(sequence: LlamaContextSequence) => void> = []
  #held = 0
  #drained: (() => void) | undefined
  #disposed = false
  /** The embedding context (made on the first `embed`, larger when an input needs it) and its size. */
  #embedding: { context: LlamaEmbeddingContext; size: number } | undefined
  /** `embed` calls run one after the other on the embedding context. */
  #embedTail: Promise<unknown> = Promise.resolve()
  readonly #embedThreads: number | undefined

  constructor(
    runtime: LlamaRuntime,
    model: LlamaModel,
    context: LlamaContext,
    embedding: { pooling: EmbeddingPooling | undefined; threads: number | undefined },
  ) {
    this.#runtime = runtime
    this.#model = model
    this.#context = context
    this.embeddingPooling = embedding.pooling
    this.#embedThreads = embedding.threads
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
      const seed = opts.seed ?? randomSeed()
      const streamer = new TextStreamer(this.tokenizer, promptTokens)
      const tokens: number[] = []
      // OpenAI's penalties are llama.cpp's penalty sampler with a repeat penalty of 1, over every
      // token generated so far (not the prompt): the first step of its chain, as of createSampler.
      const repeatPenalty =
        opts.presencePenalty === 0 && opts.frequencyPenalty === 0
          ? undefined
          : {
              punishTokens: () => tokens as Token[],
              maxPunishTokens: Math.max(1, Math.min(opts.maxTokens, this.contextSize)),
              penalty: 1,
              presencePenalty: opts.presencePenalty,
              frequencyPenalty: opts.frequencyPenalty,
            }
      const generated =
        opts.logprobs === undefined && options.constraint === undefined
          ? nativelySampled(sequence, promptTokens, {
              ...(opts.temperature > 0
                ? { temperature: opts.temperature, topK: opts.topK, topP: opts.topP, seed }
                : { temperature: 0 }),
              ...(repeatPenalty === undefined ? {} : { repeatPenalty }),
            })
          : sampledWithLogprobs(sequence, promptTokens, {
              ...opts,
              top: opts.logprobs ?? 0,
              seed,
              vocab: this.tokenizer.vocabSize,
              repeatPenalty,
              constraint: options.constraint,
            })
      let stopReason: StopReason = 'maxTokens'
      const start = performance.now()
      let first: number | undefined
      let last = start
      if (options.signal?.aborted) stopReason = 'abort'
      else {
        for await (const { id: token, logprobs } of generated) {
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
          const piece: GeneratedToken = {
            id: token,
            text: streamer.push(token),
            ...(logprobs === undefined || opts.logprobs === undefined ? {} : { logprobs }),
          }
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

  /**
   * Embeddings on an embedding context of llama.cpp (`createEmbeddingContext`), one input per
   * decode: node-llama-cpp reads the pooled vector of sequence 0 only, so inputs cannot share a
   * batch. The whole input is one batch (mean pooling needs it in one ubatch). Vectors are
   * llama.cpp's pooled final hidden states (after the output norm), L2-normalized here.
   */
  async embed(inputs: ReadonlyArray<readonly number[]>, options: EmbedOptions = {}): Promise<Float32Array[]> {
    this.#assertOpen()
    if (this.embeddingPooling === undefined) {
      throw new UnsupportedModelError(
        'this model declares a pooling that makes no embedding (rank: a reranker)',
      )
    }
    const vocab = this.tokenizer.vocabSize
    let longest = 0
    for (const tokens of inputs) {
      if (tokens.length === 0) throw new InvalidArgumentError('an embedding input is empty (no tokens)')
      for (const t of tokens) {
        if (!Number.isInteger(t) || t < 0 || t >= vocab) {
          throw new InvalidArgumentError(`token id ${t} is outside the vocabulary (0..${vocab - 1})`)
        }
      }
      longest = Math.max(longest, tokens.length)
    }
    // llama.cpp's embedding context takes inputs shorter than its size.
    this.#checkFits(longest + 1)
    const run = this.#embedTail.then(async () => {
      const context = await this.#embeddingContext(longest + 1, options.signal)
      const vectors: Float32Array[] = []
      for (const tokens of inputs) {
        options.signal?.throwIfAborted()
        this.#assertOpen()
        const { vector } = await context.getEmbeddingFor([...tokens] as Token[])
        vectors.push(l2Normalize(vector))
      }
      return vectors
    })
    this.#embedTail = run.catch(() => {})
    return await run
  }

  /** The embedding context, made or grown (doubling, up to the engine's context) to hold `needed` positions. */
  async #embeddingContext(needed: number, signal: AbortSignal | undefined): Promise<LlamaEmbeddingContext> {
    const current = this.#embedding
    if (current !== undefined && current.size >= needed) return current.context
    let size = Math.max(current?.size ?? FIRST_EMBEDDING_CONTEXT, FIRST_EMBEDDING_CONTEXT)
    while (size < needed) size *= 2
    size = Math.min(size, this.contextSize)
    this.#embedding = undefined
    await current?.context.dispose()
    const context = await this.#model
      .createEmbeddingContext({
        contextSize: size,
        // Mean pooling needs the whole input in one batch.
        batchSize: size,
        ...(this.#embedThreads === undefined ? {} : { threads: this.#embedThreads }),
        ...(signal ? { createSignal: signal } : {}),
      })
      .catch((err: unknown) => {
        if (signal?.aborted) throw err
        throw new ModelLoadError(
          `llama.cpp could not create an embedding context of ${size} positions: ${(err as Error).message}`,
          { cause: err, hint: 'send shorter inputs, or free memory' },
        )
      })
    this.#embedding = { context, size }
    return context
  }

  async dispose(): Promise<void> {
    if (this.#disposed) return
    this.#disposed = true
    if (this.#held > 0) await new Promise<void>((resolve) => (this.#drained = resolve))
    await this.#embedTail
    await this.#embedding?.context.dispose()
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
