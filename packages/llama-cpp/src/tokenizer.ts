import {
  type OpenedTokenizer,
  openSpmTokenizer,
  type Tokenizer,
  type TokenizerKind,
  type TokenPiece,
} from '@meshnet/engine'
import type { LlamaModel, Token } from 'node-llama-cpp'
import { acquireLlama } from './runtime.ts'
import { tokenPieces } from './token-pieces.ts'

/** llama.cpp's own tokenizer for a loaded (or vocab-only) model: exact for every vocabulary type. */
export class LlamaCppTokenizer implements Tokenizer {
  readonly vocabSize: number
  readonly bos: number | undefined
  readonly eos: number | undefined
  readonly addBos: boolean
  readonly #model: LlamaModel
  #pieces: TokenPiece[] | undefined

  constructor(model: LlamaModel, vocabSize: number) {
    this.#model = model
    this.vocabSize = vocabSize
    this.bos = model.tokens.bos ?? undefined
    this.eos = model.tokens.eos ?? undefined
    this.addBos = model.tokens.shouldPrependBosToken
  }

  tokenize(text: string, options: { addSpecial?: boolean; parseSpecial?: boolean } = {}): number[] {
    const tokens: number[] = this.#model.tokenize(text, options.parseSpecial === true)
    if (options.addSpecial) {
      if (this.addBos && this.bos !== undefined) tokens.unshift(this.bos)
      if (this.#model.tokens.shouldAppendEosToken && this.eos !== undefined) tokens.push(this.eos)
    }
    return tokens
  }

  detokenize(
    tokens: readonly number[],
    options: { context?: readonly number[]; renderSpecial?: boolean } = {},
  ): string {
    const special = options.renderSpecial === true
    const context = (options.context ?? []).slice(-8) as Token[]
    if (context.length === 0) return this.#model.detokenize(tokens as Token[], special)
    // llama.cpp drops the first piece's leading space only at the start of a text: render the
    // context too and cut it off.
    const before = this.#model.detokenize(context, special)
    const all = this.#model.detokenize([...context, ...(tokens as Token[])], special)
    return all.startsWith(before)
      ? all.slice(before.length)
      : this.#model.detokenize(tokens as Token[], special)
  }

  isEog(token: number): boolean {
    return this.#model.isEogToken(token as Token)
  }

  /**
   * The token's bytes decoded from the GGUF vocabulary (not through detokenize, which turns part of
   * a UTF-8 character into U+FFFD); computed once for the whole vocabulary.
   */
  piece(id: number): TokenPiece {
    if (this.#pieces === undefined) {
      const ggml = this.#model.fileInfo.metadata?.tokenizer?.ggml
      const pieces = tokenPieces(ggml?.model, ggml?.tokens ?? [], ggml?.token_type)
      // llama.cpp's own end-of-generation tokens are control tokens whatever their type says.
      for (let i = 0; i < pieces.length; i++) {
        if (!pieces[i]!.control && this.isEog(i)) pieces[i] = { ...pieces[i]!, control: true }
      }
      this.#pieces = pieces
    }
    return this.#pieces[id] ?? { bytes: new Uint8Array(0), control: true }
  }
}

/**
 * The tokenizer of a GGUF model without its weights: the Meshnet SentencePiece tokenizer for llama
 * vocabularies, else llama.cpp's loaded vocab-only (exact for every vocabulary llama.cpp reads).
 */
export async function openModelTokenizer(
  path: string,
  kind: TokenizerKind = 'auto',
): Promise<OpenedTokenizer> {
  const spm = await openSpmTokenizer(path, kind)
  if (spm !== undefined) return spm
  const runtime = await acquireLlama()
  try {
    const model = await runtime.llama.loadModel({ modelPath: path, vocabOnly: true })
    const vocab = model.fileInfo.metadata?.tokenizer?.ggml?.tokens?.length ?? 0
    return {
      tokenizer: new LlamaCppTokenizer(model, vocab),
      async dispose() {
        await model.dispose()
        await runtime.release()
      },
    }
  } catch (err) {
    await runtime.release()
    throw err
  }
}
