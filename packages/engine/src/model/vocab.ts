import type { GGUFReader } from '@meshnet/gguf'
import { UnsupportedModelError } from '../errors.ts'
import { SpmTokenizer } from '../tokenizer.ts'

/** The SentencePiece tokenizer of a GGUF whose `tokenizer.ggml.model` is "llama". */
export function spmTokenizerFromGGUF(file: GGUFReader): SpmTokenizer {
  const model = file.getString('tokenizer.ggml.model')
  if (model !== 'llama') {
    throw new UnsupportedModelError(
      `${file.path} has a '${model ?? 'missing'}' tokenizer; the Meshnet tokenizer reads SentencePiece ('llama') vocabularies only`,
      { hint: "use tokenizer: 'llama-cpp' (a vocab-only load through node-llama-cpp)" },
    )
  }
  const array = (key: string) => {
    const value = file.metadata.get(key)
    return value?.type === 'array' ? value.value : undefined
  }
  const tokens = array('tokenizer.ggml.tokens')
  if (!Array.isArray(tokens) || !tokens.every((t: unknown) => typeof t === 'string')) {
    throw new UnsupportedModelError(`${file.path} has no tokenizer.ggml.tokens string array`)
  }
  const numbers = (key: string): ArrayLike<number> | undefined => {
    const value = array(key)
    if (value === undefined || value instanceof BigInt64Array || value instanceof BigUint64Array)
      return undefined
    return Array.isArray(value) ? undefined : (value as ArrayLike<number>)
  }
  const id = (key: string) => file.getNumber(key)
  const scores = numbers('tokenizer.ggml.scores')
  const types = numbers('tokenizer.ggml.token_type')
  return new SpmTokenizer({
    tokens: tokens as string[],
    ...(scores ? { scores } : {}),
    ...(types ? { types } : {}),
    bos: id('tokenizer.ggml.bos_token_id'),
    eos: id('tokenizer.ggml.eos_token_id'),
    unk: id('tokenizer.ggml.unknown_token_id'),
    eot: id('tokenizer.ggml.eot_token_id'),
    eom: id('tokenizer.ggml.eom_token_id'),
    addBos: file.getBoolean('tokenizer.ggml.add_bos_token'),
    addEos: file.getBoolean('tokenizer.ggml.add_eos_token'),
    addSpacePrefix: file.getBoolean('tokenizer.ggml.add_space_prefix'),
  })
}
