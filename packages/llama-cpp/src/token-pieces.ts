import type { TokenPiece } from '@meshnet/engine'
import { LLAMA_TOKEN_TYPE } from '@meshnet/gguf'

/**
 * GPT-2's byte-level BPE stores each byte as a printable character (`bytes_to_unicode`): the
 * printable Latin-1 bytes as themselves, the others as U+0100 onwards (space is `Ġ`, `\n` is `Ċ`).
 * This is the reverse map, character code to byte.
 */
const GPT2_BYTES: ReadonlyMap<number, number> = (() => {
  const map = new Map<number, number>()
  let shifted = 0
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff)
    map.set(printable ? b : 256 + shifted++, b)
  }
  return map
})()

const encoder = new TextEncoder()

/** The bytes a GPT-2-mapped token string stands for (`Ġhello` → ` hello`). */
export function decodeGpt2Token(text: string): Uint8Array {
  const out: number[] = []
  for (const ch of text) {
    const byte = GPT2_BYTES.get(ch.codePointAt(0)!)
    // llama.cpp keeps a character outside the map as its UTF-8.
    if (byte === undefined) out.push(...encoder.encode(ch))
    else out.push(byte)
  }
  return Uint8Array.from(out)
}

/**
 * Every token's piece, from a GGUF vocabulary (`tokenizer.ggml.model`, `.tokens`, `.token_type`),
 * as llama.cpp's `token_to_piece` renders them: normal tokens decoded (GPT-2 byte mapping for
 * `gpt2`, `▁` as a space otherwise), byte tokens (`<0x0A>`) as their byte, user-defined tokens as
 * their text, and the rest (control, unknown, unused) as control tokens whose bytes are their text.
 */
export function tokenPieces(
  model: string | undefined,
  tokens: readonly string[],
  types: ArrayLike<number> | undefined,
): TokenPiece[] {
  return tokens.map((text, id) => {
    const type = types?.[id] ?? LLAMA_TOKEN_TYPE.NORMAL
    switch (type) {
      case LLAMA_TOKEN_TYPE.NORMAL:
        return {
          bytes: model === 'gpt2' ? decodeGpt2Token(text) : encoder.encode(text.replaceAll('\u2581', ' ')),
          control: false,
        }
      case LLAMA_TOKEN_TYPE.BYTE: {
        const byte = /^<0x([0-9A-Fa-f]{2})>$/.exec(text)
        return {
          bytes: byte === null ? decodeGpt2Token(text) : Uint8Array.of(Number.parseInt(byte[1]!, 16)),
          control: false,
        }
      }
      case LLAMA_TOKEN_TYPE.USER_DEFINED:
        return { bytes: encoder.encode(text), control: false }
      default:
        return { bytes: encoder.encode(text), control: true }
    }
  })
}
