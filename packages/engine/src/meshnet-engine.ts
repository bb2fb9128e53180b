import { availableParallelism } from 'node:os'
import { InvalidArgumentError, parseWith } from '@meshnet/core'
import { openGGUF } from '@meshnet/gguf'
import { z } from 'zod'
import { ContextOverflowError, EngineDisposedError, UnsupportedModelError } from './errors.ts'
import type { Kernels } from './kernels/api.ts'
import { KernelMemoryError } from './kernels/errors.ts'
import { createJsKernels } from './kernels/js.ts'
import { createWasmKernels } from './kernels/wasm.ts'
import { EmbeddingPooler, type EmbeddingPooling, readEmbeddingPooling } from './model/embedding.ts'
import type { LlamaShardImpl } from './model/llama-shard.ts'
import { loadShard } from './model/shard.ts'
import type { LlamaShard } from './model/shard-types.ts'
import { StepBatcher } from './model/step-batcher.ts'
import { spmTokenizerFromGGUF } from './model/vocab.ts'
import { createSampler } from './sampling.ts'
import { TextStreamer } from './text-stream.ts'
import {
  type EmbedOptions,
  type EvaluateLogitsOptions,
  type GeneratedToken,
  type GenerateOptions,
  type GenerateResult,
  type InferenceEngine,
  parseGenerateOptions,
  type StopReason,
  type Tokenizer,
} from './types.ts'

export const meshnetEngineOptionsSchema = z.strictObject({
  /** A GGUF file of an architecture the engine runs (see the README's supported models). */
  modelPath: z.string().min(1),
  /** Threads of the WebAssembly kernels. Default: the machine's cores (`os.availableParallelism()`). */
  threads: z.number().int().min(1).max(256).optional(),
  /**
   * How long an idle kernel thread polls for the next job before it sleeps, in poll rounds of about
   * 0.7 ns (default 100000: ~70 µs; see `createWasmKernels`). 0 suits a machine busy with other work.
   */
  spinIterations: z
    .number()
    .int()
    .min(0)
    .max(2 ** 31 - 1)
    .optional(),
  /** Positions of KV cache. Default: the model's training context, at most 4096. */
  contextSize: z
    .number()
    .int()
    .min(16)
    .max(1 << 20)
    .optional(),
  /** KV cache element type; f16 (the default) is what llama.cpp uses. */
  kvCacheType: z.enum(['f16', 'f32']).default('f16'),
  /** Positions per pass: a prompt goes in steps of this many, and the decode steps of up to this many sequences share a pass. */
  maxBatch: z.number().int().min(1).max(4096).default(64),
  /**
   * Sequences generated at once (default 1): concurrent `stream`/`generate` calls each get a KV
   * cache of their own (`contextSize` positions each, allocated as they are first needed), and
   * their steps share passes over the weights (continuous batching, see `StepBatcher`); more
   * calls wait for a sequence to come free.
   */
  parallel: z.number().int().min(1).max(256).default(1),
  /**
   * 'meshnet': this package's SentencePiece tokenizer (llama vocabularies); 'llama-cpp': a
   * vocab-only load through node-llama-cpp (any vocabulary); 'auto' (default): the first that fits.
   */
  tokenizer: z.enum(['auto', 'meshnet', 'llama-cpp']).default('auto'),
})

/** Which tokenizer a model gets: see `tokenizer` in meshnetEngineOptionsSchema. */
export type TokenizerKind = 'auto' | 'meshnet' | 'llama-cpp'

/** Opens a model's tokenizer for vocabularies this package does not read (`openModelTokenizer` of @meshnet/llama-cpp). */
export type TokenizerOpener = (path: string, kind: TokenizerKind) => Promise<OpenedTokenizer>

export type MeshnetEngineOptions = z.input<typeof meshnetEngineOptionsSchema> & {
  /** Opens the tokenizer of a vocabulary other than llama's SentencePiece one; without it such models are refused. */
  openTokenizer?: TokenizerOpener
  /**
   * What multiplies the matrices: 'wasm' (default; WebAssembly SIMD on `threads` threads), 'js'
   * (the plain TypeScript reference), or kernels the caller made (and disposes).
   */
  kernels?: 'wasm' | 'js' | Kernels
  signal?: AbortSignal
}

/** The Meshnet engine: the whole model as one shard on this machine. */
export interface MeshnetEngine extends InferenceEngine {
  readonly engine: 'meshnet'
  readonly shard: LlamaShard
  readonly kernels: Kernels
  /** How `embed` pools (the GGUF's `<arch>.pooling_type`, mean when none); undefined: the model makes no embeddings (a reranker). */
  readonly embeddingPooling: EmbeddingPooling | undefined
}

/** Loads a llama GGUF into the Meshnet engine (all layers, all columns). */
export async function createMeshnetEngine(options: MeshnetEngineOptions): Promise<MeshnetEngine> {
  const { kernels: given, signal, openTokenizer, ...rest } = options
  const parsed = parseWith(meshnetEngineOptionsSchema, rest, 'meshnet engine option')
  const opts = parsed
  const owned = typeof given !== 'object'
  const kernels =
    given === 'js'
      ? createJsKernels()
      : typeof given === 'object'
        ? given
        : await createWasmKernels({
            threads: Math.min(256, opts.threads ?? availableParallelism()),
            ...(opts.spinIterations === undefined ? {} : { spinIterations: opts.spinIterations }),
          })
  let opened: OpenedTokenizer | undefined
  let shard: LlamaShard | undefined
  try {
    opened =
      (await openSpmTokenizer(opts.modelPath, opts.tokenizer)) ?? (await openOther(openTokenizer, opts))
    const file = await openGGUF(opts.modelPath)
    let pooling: EmbeddingPooling | undefined
    try {
      pooling = readEmbeddingPooling(file).pooling
    } finally {
      await file.close()
    }
    shard = await loadShard({
      path: opts.modelPath,
      kernels,
      kvCacheType: opts.kvCacheType,
      maxBatch: opts.maxBatch,
      ...(opts.contextSize === undefined ? {} : { contextSize: opts.contextSize }),
      ...(signal ? { signal } : {}),
    })
    return new MeshnetEngineImpl(shard, kernels, owned, opened, { ...opts, pooling })
  } catch (err) {
    await shard?.dispose()
    await opened?.dispose()
    if (owned) await kernels.dispose()
    throw err
  }
}

/** A model's tokenizer, opened on its own (no weights loaded). */
export interface OpenedTokenizer {
  tokenizer: Tokenizer
  dispose(): Promise<void>
}

/**
 * This package's SentencePiece tokenizer of a GGUF model, without its weights, when the model has
 * a llama vocabulary (or `kind` is 'meshnet'); undefined when it needs another tokenizer.
 */
export async function openSpmTokenizer(
  path: string,
  kind: TokenizerKind = 'auto',
): Promise<OpenedTokenizer | undefined> {
  if (kind === 'llama-cpp') return undefined
  const file = await openGGUF(path)
  try {
    if (kind === 'meshnet' || file.getString('tokenizer.ggml.model') === 'llama') {
      return { tokenizer: spmTokenizerFromGGUF(file), dispose: async () => {} }
    }
    return undefined
  } finally {
    await file.close()
  }
}

async function openOther(
  opener: TokenizerOpener | undefined,
  opts: { modelPath: string; tokenizer: TokenizerKind },
): Promise<OpenedTokenizer> {
  if (opener === undefined) {
    throw new UnsupportedModelError(
      `${opts.modelPath} has a vocabulary the Meshnet tokenizer does not read`,
      {
        hint: 'pass openTokenizer (openModelTokenizer of @meshnet/llama-cpp reads every vocabulary)',
      },
    )
  }
  return opener(opts.modelPath, opts.tokenizer)
}

/** One sequence: a session over the engine's weights and the tokens its KV cache holds. */
interface Slot {
  shard: LlamaShard
  cached: number[]
  busy: boolean
}

class MeshnetEngineImpl implements MeshnetEngine {
  readonly engine = 'meshnet' as const
  readonly shard: LlamaShard
  readonly kernels: Kernels
  readonly tokenizer: Tokenizer
  readonly contextSize: number
  readonly embeddingPooling: EmbeddingPooling | undefined
  readonly #ownsKernels: boolean
  readonly #opened: OpenedTokenizer
  readonly #slots: Slot[]
  readonly #parallel: number
  readonly #chunk: number
  readonly #batcher: StepBatcher
  /** Calls waiting for a sequence, first come first served. */
  readonly #waiting: Array<() => void> = []
  #disposed = false

  constructor(
    shard: LlamaShard,
    kernels: Kernels,
    ownsKernels: boolean,
    opened: OpenedTokenizer,
    opts: { parallel: number; maxBatch: number; pooling: EmbeddingPooling | undefined },
  ) {
    this.shard = shard
    this.kernels = kernels
    this.#ownsKernels = ownsKernels
    this.tokenizer = opened.tokenizer
    this.#opened = opened
    this.contextSize = shard.contextSize
    this.embeddingPooling = opts.pooling
    this.#slots = [{ shard, cached: [], busy: false }]
    this.#parallel = opts.parallel
    this.#chunk = opts.maxBatch
    this.#batcher = new StepBatcher()
  }

  async *stream(
    prompt: string | readonly number[],
    options: GenerateOptions = {},
  ): AsyncGenerator<GeneratedToken, GenerateResult> {
    const opts = parseGenerateOptions(options)
    this.#assertOpen()
    const promptTokens = this.#promptTokens(prompt)
    const slot = await this.#acquire(promptTokens)
    try {
      this.#assertOpen()
      const sampler = createSampler(
        {
          temperature: opts.temperature,
          topK: opts.topK,
          topP: opts.topP,
          presencePenalty: opts.presencePenalty,
          frequencyPenalty: opts.frequencyPenalty,
          ...(opts.seed === undefined ? {} : { seed: opts.seed }),
        },
        options.constraint === undefined ? {} : { constraint: options.constraint },
      )
      const streamer = new TextStreamer(this.tokenizer, promptTokens)
      const tokens: number[] = []
      const signal = options.signal
      let stopReason: StopReason = 'maxTokens'
      const start = performance.now()
      let first: number | undefined
      let last = start
      // Reuse the cached prefix; the last prompt token is always evaluated for its logits.
      const common = commonPrefix(slot.cached, promptTokens)
      let logits = await this.#evaluate(slot, promptTokens.slice(common), common, signal)
      while (logits !== undefined) {
        const sampled =
          opts.logprobs === undefined
            ? { id: sampler.sample(logits), logprobs: undefined }
            : sampler.sampleWithLogprobs(logits, { top: opts.logprobs })
        const token = sampled.id
        last = performance.now()
        first ??= last
        if (opts.stopOnEog && this.tokenizer.isEog(token)) {
          stopReason = 'eog'
          break
        }
        tokens.push(token)
        const piece: GeneratedToken = {
          id: token,
          text: streamer.push(token),
          ...(sampled.logprobs === undefined ? {} : { logprobs: sampled.logprobs }),
        }
        options.onToken?.(piece)
        yield piece
        if (tokens.length >= opts.maxTokens) break
        if (slot.cached.length >= this.contextSize) {
          stopReason = 'contextFull'
          break
        }
        logits = await this.#evaluate(slot, [token], slot.cached.length, signal)
      }
      if (logits === undefined) stopReason = 'abort'
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
      this.#release(slot)
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
    this.#assertOpen()
    if (tokens.length === 0) return []
    const slot = await this.#acquire([])
    try {
      this.#assertOpen()
      slot.cached = []
      const vocab = this.shard.config.vocab
      const rows: Float32Array[] = []
      const signal = options.signal
      const evaluate = async (batch: readonly number[], pos: number) => {
        const out = await this.#batcher.forwardChunked(slot.shard, { tokens: batch }, pos, {
          chunk: this.#chunk,
          logits: 'all',
          ...(signal ? { signal } : {}),
        })
        if (out.kind !== 'logits') throw new Error('unreachable: a whole-model shard returns logits')
        for (let i = 0; i < batch.length; i++) rows.push(out.logits.slice(i * vocab, (i + 1) * vocab))
      }
      const split = Math.max(1, Math.min(tokens.length, options.decodeFrom ?? tokens.length))
      try {
        await evaluate(tokens.slice(0, split), 0)
        for (let i = split; i < tokens.length; i++) await evaluate([tokens[i]!], i)
      } catch (err) {
        slot.shard.truncate(0)
        throw err
      }
      slot.cached = [...tokens]
      return rows
    } finally {
      this.#release(slot)
    }
  }

  async embed(inputs: ReadonlyArray<readonly number[]>, options: EmbedOptions = {}): Promise<Float32Array[]> {
    this.#assertOpen()
    const pooling = this.embeddingPooling
    if (pooling === undefined) {
      throw new UnsupportedModelError(
        'this model declares a pooling that makes no embedding (rank: a reranker)',
      )
    }
    const checked = inputs.map((tokens) => this.#embeddingTokens(tokens))
    // Each input is a sequence of its own: with `parallel` above 1 their steps share passes.
    return await Promise.all(checked.map((tokens) => this.#embedOne(tokens, pooling, options.signal)))
  }

  async #embedOne(
    tokens: readonly number[],
    pooling: EmbeddingPooling,
    signal: AbortSignal | undefined,
  ): Promise<Float32Array> {
    const slot = await this.#acquire(tokens)
    try {
      this.#assertOpen()
      signal?.throwIfAborted()
      slot.cached = []
      const out = await this.#batcher
        .forwardChunked(slot.shard, { tokens }, 0, {
          chunk: this.#chunk,
          logits: 'none',
          ...(signal ? { signal } : {}),
        })
        .catch((err: unknown) => {
          slot.shard.truncate(0)
          throw err
        })
      if (out.kind !== 'hidden') throw new Error('unreachable: logits none gives the hidden states')
      slot.cached = [...tokens]
      const pooler = new EmbeddingPooler(pooling, this.shard.config.embd)
      pooler.add(slot.shard.outputNorm(out.hidden, out.n), out.n)
      return pooler.vector()
    } finally {
      this.#release(slot)
    }
  }

  #embeddingTokens(tokens: readonly number[]): number[] {
    if (tokens.length === 0) throw new InvalidArgumentError('an embedding input is empty (no tokens)')
    if (tokens.length > this.contextSize) {
      throw new ContextOverflowError(
        `an embedding input of ${tokens.length} tokens does not fit the context of ${this.contextSize}`,
        { hint: 'shorten the input or create the engine with a larger contextSize' },
      )
    }
    const vocab = this.shard.config.vocab
    for (const t of tokens) {
      if (!Number.isInteger(t) || t < 0 || t >= vocab) {
        throw new InvalidArgumentError(`token id ${t} is outside the vocabulary (0..${vocab - 1})`)
      }
    }
    return [...tokens]
  }

  async dispose(): Promise<void> {
    if (this.#disposed) return
    this.#disposed = true
    for (const wake of this.#waiting.splice(0)) wake()
    while (this.#slots.some((s) => s.busy)) await new Promise((resolve) => setTimeout(resolve, 5))
    this.#batcher.close()
    // The sequences after the first share its weights: they go first.
    for (const slot of this.#slots.slice(1).reverse()) await slot.shard.dispose()
    await this.shard.dispose()
    if (this.#ownsKernels) await this.kernels.dispose()
    await this.#opened.dispose()
  }

  /**
   * A free sequence for `prompt`: the one whose cache holds the longest prefix of it, a new one
   * while fewer than `parallel` exist (and kernel memory has room), or the next to come free.
   */
  async #acquire(prompt: readonly number[]): Promise<Slot> {
    for (;;) {
      this.#assertOpen()
      let best: Slot | undefined
      let bestCommon = -1
      for (const slot of this.#slots) {
        if (slot.busy) continue
        const common = commonPrefix(slot.cached, prompt)
        if (common > bestCommon) {
          best = slot
          bestCommon = common
        }
      }
      if (best !== undefined && (bestCommon > 0 || this.#slots.length >= this.#parallel)) {
        best.busy = true
        return best
      }
      if (this.#slots.length < this.#parallel) {
        try {
          const slot: Slot = { shard: (this.shard as LlamaShardImpl).session(), cached: [], busy: true }
          this.#slots.push(slot)
          return slot
        } catch (err) {
          // No room for another KV cache: wait for a sequence instead.
          if (!(err instanceof KernelMemoryError)) throw err
        }
      }
      if (best !== undefined) {
        best.busy = true
        return best
      }
      await new Promise<void>((resolve) => this.#waiting.push(resolve))
    }
  }

  #release(slot: Slot): void {
    slot.busy = false
    this.#waiting.shift()?.()
  }

  /** Evaluates `tokens` at `pos` in `slot`; the last position's logits, or undefined when aborted. */
  async #evaluate(
    slot: Slot,
    tokens: number[],
    pos: number,
    signal: AbortSignal | undefined,
  ): Promise<Float32Array | undefined> {
    if (signal?.aborted) return undefined
    slot.cached.length = pos
    try {
      const out = await this.#batcher.forwardChunked(slot.shard, { tokens }, pos, {
        chunk: this.#chunk,
        ...(signal ? { signal } : {}),
      })
      slot.cached.push(...tokens)
      return out.kind === 'logits' ? out.logits : undefined
    } catch (err) {
      // A forward cut short leaves the cache half written: forget it.
      slot.cached = []
      slot.shard.truncate(0)
      if (signal?.aborted) return undefined
      throw err
    }
  }

  #promptTokens(prompt: string | readonly number[]): number[] {
    const tokens =
      typeof prompt === 'string' ? this.tokenizer.tokenize(prompt, { addSpecial: true }) : [...prompt]
    if (tokens.length === 0) throw new InvalidArgumentError('the prompt is empty (no tokens to evaluate)')
    return tokens
  }

  #assertOpen(): void {
    if (this.#disposed) throw new EngineDisposedError('the meshnet engine was disposed')
  }
}

/** How many leading tokens `cached` and `prompt` share, leaving the prompt's last one to evaluate. */
function commonPrefix(cached: readonly number[], prompt: readonly number[]): number {
  let common = 0
  while (common < cached.length && common < prompt.length - 1 && cached[common] === prompt[common]) common++
  return common
}
