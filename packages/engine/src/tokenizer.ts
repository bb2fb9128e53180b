import { LLAMA_TOKEN_TYPE } from '@meshnet/gguf'
import { UnsupportedModelError } from './errors.ts'
import type { Tokenizer, TokenPiece } from './types.ts'

/** Tokens llama.cpp treats as end-of-generation by their text (and marks as control tokens). */
const EOG_TEXTS: ReadonlySet<string> = new Set([
  '<|eot_id|>',
  '<|im_end|>',
  '<|end|>',
  '<|return|>',
  '<|call|>',
  '<|flush|>',
  '<|calls|>',
  '<end_of_turn>',
  '<|endoftext|>',
  '</s>',
  '<|eom_id|>',
  '<EOT>',
  '_<EOT>',
  '[EOT]',
  '[EOS]',
  '<|end_of_text|>',
  '<end_of_utterance>',
  '<eos>',
  '<turn|>',
  '<|tool_response>',
  '<｜end▁of▁sentence｜>',
  '[e~[',
])

const SPACE = '\u2581'

/** What a SentencePiece (`tokenizer.ggml.model = "llama"`) vocabulary holds. */
export interface SpmVocab {
  tokens: readonly string[]
  scores?: ArrayLike<number>
  types?: ArrayLike<number>
  bos?: number
  eos?: number
  unk?: number
  eot?: number
  eom?: number
  addBos?: boolean
  addEos?: boolean
  addSpacePrefix?: boolean
}

export interface TokenizeOptions {
  /** Prepend BOS (and append EOS) as the model asks (`tokenizer.ggml.add_bos_token`). Default false. */
  addSpecial?: boolean
  /** Turn the text of control tokens (`<s>`, `</s>`) into those tokens. Default false. */
  parseSpecial?: boolean
}

export interface DetokenizeOptions {
  /** Render control and unknown tokens as their text. Default false (they render as nothing). */
  renderSpecial?: boolean
  /**
   * The tokens that came before. When there are some, the first token keeps its leading space (a
   * continuation); otherwise, like llama.cpp, one leading space of the first piece is dropped when
   * the vocabulary adds a space prefix.
   */
  context?: readonly number[]
}

interface Bigram {
  left: number
  right: number
  score: number
  size: number
}

/**
 * llama.cpp's SentencePiece tokenizer (`llm_tokenizer_spm`): text is split into UTF-8 characters,
 * adjacent pairs that form a vocabulary token are merged highest score first (ties: leftmost), and
 * characters no token covers become byte tokens (`<0xXX>`). The result equals `llama_tokenize`.
 */
export class SpmTokenizer implements Tokenizer {
  readonly vocabSize: number
  readonly bos: number | undefined
  readonly eos: number | undefined
  readonly unk: number | undefined
  readonly eot: number | undefined
  readonly addBos: boolean
  readonly addEos: boolean
  readonly addSpacePrefix: boolean
  /** Tokens that end generation: EOS, EOT, EOM and the control tokens llama.cpp recognises by text. */
  readonly eog: ReadonlySet<number>
  readonly #texts: string[]
  readonly #scores: Float32Array
  readonly #types: Uint8Array
  readonly #ids = new Map<string, number>()
  readonly #pieces: Array<Uint8Array | undefined>
  readonly #special: number[]
  #tokenPieces: TokenPiece[] | undefined

  constructor(vocab: SpmVocab) {
    const n = vocab.tokens.length
    if (n === 0) throw new UnsupportedModelError('the vocabulary (tokenizer.ggml.tokens) is empty')
    this.vocabSize = n
    this.#texts = vocab.tokens.map((t, i) => (t === '' ? `[EMPTY_${i}]` : t))
    this.#scores = Float32Array.from({ length: n }, (_, i) => vocab.scores?.[i] ?? 0)
    this.#types = Uint8Array.from({ length: n }, (_, i) => vocab.types?.[i] ?? LLAMA_TOKEN_TYPE.NORMAL)
    for (let i = 0; i < n; i++) this.#ids.set(this.#texts[i]!, i)
    const inRange = (id: number | undefined) => (id !== undefined && id >= 0 && id < n ? id : undefined)
    // llama.cpp's defaults for a SentencePiece vocabulary.
    this.bos = inRange(vocab.bos ?? 1)
    this.eos = inRange(vocab.eos ?? 2)
    this.unk = inRange(vocab.unk ?? 0)
    const eot = inRange(vocab.eot)
    const eom = inRange(vocab.eom)
    const eog = new Set<number>()
    for (const [text, id] of this.#ids) {
      if (!EOG_TEXTS.has(text)) continue
      eog.add(id)
      this.#types[id] = LLAMA_TOKEN_TYPE.CONTROL
    }
    for (const id of [this.eos, eot, eom]) if (id !== undefined) eog.add(id)
    this.eot = eot
    this.eog = eog
    this.addBos = vocab.addBos ?? true
    this.addEos = vocab.addEos ?? false
    this.addSpacePrefix = vocab.addSpacePrefix ?? true
    const encoder = new TextEncoder()
    this.#pieces = this.#texts.map((text, id) => {
      const type = this.#types[id]
      if (type === LLAMA_TOKEN_TYPE.NORMAL) return encoder.encode(text.replaceAll(SPACE, ' '))
      if (type === LLAMA_TOKEN_TYPE.BYTE) return Uint8Array.of(Number.parseInt(text.slice(3, 5), 16) || 0)
      if (type === LLAMA_TOKEN_TYPE.USER_DEFINED) return encoder.encode(text)
      return undefined
    })
    // Longest first, as llama.cpp partitions the text on them.
    this.#special = []
    for (let id = 0; id < n; id++) {
      const t = this.#types[id]
      if (
        t === LLAMA_TOKEN_TYPE.CONTROL ||
        t === LLAMA_TOKEN_TYPE.USER_DEFINED ||
        t === LLAMA_TOKEN_TYPE.UNKNOWN
      )
        this.#special.push(id)
    }
    const byteLength = (id: number) => encoder.encode(this.#texts[id]!).length
    this.#special.sort((a, b) => byteLength(b) - byteLength(a) || a - b)
  }

  /** The token's text as stored in the vocabulary. */
  tokenText(id: number): string {
    return this.#texts[id] ?? ''
  }

  isEog(id: number): boolean {
    return this.eog.has(id)
  }

  tokenize(text: string, options: TokenizeOptions = {}): number[] {
    const out: number[] = []
    if (options.addSpecial && this.addBos && this.bos !== undefined) out.push(this.bos)
    let prevSpecial = true
    for (const fragment of this.#partition(text, options.parseSpecial === true)) {
      if (typeof fragment === 'number') {
        out.push(fragment)
        prevSpecial = true
        continue
      }
      const prefixed = this.addSpacePrefix && prevSpecial ? ` ${fragment}` : fragment
      this.#tokenizeFragment(prefixed.replaceAll(' ', SPACE), out)
      prevSpecial = false
    }
    if (options.addSpecial && this.addEos && this.eos !== undefined) out.push(this.eos)
    return out
  }

  /** The UTF-8 bytes a token renders as (empty for control, unknown and unused tokens). */
  tokenBytes(id: number, renderSpecial = false): Uint8Array {
    const piece = this.#pieces[id]
    if (piece !== undefined) return piece
    const type = this.#types[id]
    if (renderSpecial && (type === LLAMA_TOKEN_TYPE.CONTROL || type === LLAMA_TOKEN_TYPE.UNKNOWN)) {
      return new TextEncoder().encode(this.#texts[id] ?? '')
    }
    return new Uint8Array(0)
  }

  /**
   * What the token adds to generated text: normal, byte and user-defined tokens are text (`▁` as a
   * space, a byte token as its one byte); the others (control, unknown, unused) are control tokens
   * whose bytes are their text. Computed once for the whole vocabulary.
   */
  piece(id: number): TokenPiece {
    if (this.#tokenPieces === undefined) {
      const encoder = new TextEncoder()
      this.#tokenPieces = this.#texts.map((text, i) => {
        const bytes = this.#pieces[i]
        return bytes === undefined
          ? { bytes: encoder.encode(text), control: true }
          : { bytes, control: false }
      })
    }
    return this.#tokenPieces[id] ?? { bytes: new Uint8Array(0), control: true }
  }

  /** The bytes of a token sequence, as `llama_detokenize` builds them. */
  detokenizeBytes(tokens: readonly number[], options: DetokenizeOptions = {}): Uint8Array {
    const parts: Uint8Array[] = []
    let removeSpace = this.addSpacePrefix && (options.context?.length ?? 0) === 0
    for (let i = 0; i < tokens.length; i++) {
      let piece = this.tokenBytes(tokens[i]!, options.renderSpecial === true)
      if (removeSpace && piece[0] === 0x20) piece = piece.subarray(1)
      removeSpace = false
      parts.push(piece)
    }
    const total = parts.reduce((sum, p) => sum + p.length, 0)
    const out = new Uint8Array(total)
    let offset = 0
    for (const p of parts) {
      out.set(p, offset)
      offset += p.length
    }
    return out
  }

  detokenize(tokens: readonly number[], options: DetokenizeOptions = {}): string {
    return new TextDecoder().decode(this.detokenizeBytes(tokens, options))
  }

  #partition(text: string, parseSpecial: boolean): Array<string | number> {
    let fragments: Array<string | number> = text === '' ? [] : [text]
    for (const id of this.#special) {
      const type = this.#types[id]
      if (!parseSpecial && type !== LLAMA_TOKEN_TYPE.USER_DEFINED) continue
      const needle = this.#texts[id]!
      const next: Array<string | number> = []
      for (const fragment of fragments) {
        if (typeof fragment === 'number' || !fragment.includes(needle)) {
          next.push(fragment)
          continue
        }
        const pieces = fragment.split(needle)
        pieces.forEach((piece, i) => {
          if (i > 0) next.push(id)
          if (piece !== '') next.push(piece)
        })
      }
      fragments = next
    }
    return fragments
  }

  #tokenizeFragment(text: string, out: number[]): void {
    const chars = Array.from(text)
    const n = chars.length
    if (n === 0) return
    const symText = chars.slice()
    const prev = Int32Array.from({ length: n }, (_, i) => i - 1)
    const next = Int32Array.from({ length: n }, (_, i) => (i + 1 < n ? i + 1 : -1))
    const size = new Int32Array(n).fill(1)
    const heap = new BigramHeap()
    const tryAdd = (left: number, right: number) => {
      if (left === -1 || right === -1) return
      const merged = symText[left]! + symText[right]!
      const id = this.#ids.get(merged)
      if (id === undefined) return
      heap.push({ left, right, score: this.#scores[id]!, size: size[left]! + size[right]! })
    }
    for (let i = 1; i < n; i++) tryAdd(i - 1, i)
    for (let bigram = heap.pop(); bigram !== undefined; bigram = heap.pop()) {
      const { left, right } = bigram
      if (size[left] === 0 || size[right] === 0 || size[left]! + size[right]! !== bigram.size) continue
      symText[left] = symText[left]! + symText[right]!
      size[left] = size[left]! + size[right]!
      size[right] = 0
      next[left] = next[right]!
      if (next[right]! >= 0) prev[next[right]!] = left
      tryAdd(prev[left]!, left)
      tryAdd(left, next[left]!)
    }
    const encoder = new TextEncoder()
    for (let i = 0; i !== -1; i = next[i]!) {
      const id = this.#ids.get(symText[i]!)
      if (id !== undefined) {
        out.push(id)
        continue
      }
      for (const byte of encoder.encode(symText[i]!)) out.push(this.#byteToken(byte))
    }
  }

  #byteToken(byte: number): number {
    const hex = byte.toString(16).toUpperCase().padStart(2, '0')
    const id = this.#ids.get(`<0x${hex}>`) ?? this.#ids.get(String.fromCharCode(byte))
    if (id !== undefined) return id
    if (this.unk !== undefined) return this.unk
    throw new UnsupportedModelError(`the vocabulary has no byte token <0x${hex}> and no unknown token`)
  }
}

/** Max-heap of bigrams: highest score first, then leftmost (llama.cpp's `llm_bigram_spm` order). */
class BigramHeap {
  readonly #items: Bigram[] = []

  push(item: Bigram): void {
    const items = this.#items
    items.push(item)
    let i = items.length - 1
    while (i > 0) {
      const parent = (i - 1) >> 1
      if (!before(items[i]!, items[parent]!)) break
      ;[items[i], items[parent]] = [items[parent]!, items[i]!]
      i = parent
    }
  }

  pop(): Bigram | undefined {
    const items = this.#items
    const top = items[0]
    const last = items.pop()
    if (top === undefined || last === undefined || items.length === 0) return top
    items[0] = last
    let i = 0
    for (;;) {
      const l = 2 * i + 1
      const r = l + 1
      let best = i
      if (l < items.length && before(items[l]!, items[best]!)) best = l
      if (r < items.length && before(items[r]!, items[best]!)) best = r
      if (best === i) break
      ;[items[i], items[best]] = [items[best]!, items[i]!]
      i = best
    }
    return top
  }
}

function before(a: Bigram, b: Bigram): boolean {
  return a.score > b.score || (a.score === b.score && a.left < b.left)
}
