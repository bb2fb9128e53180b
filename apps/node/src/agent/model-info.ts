import { stat } from 'node:fs/promises'
import { openGGUF } from '@meshnet/gguf'
import type { CompletionModel } from './openai-types.ts'

/** What the API shows of a GGUF: its chat template and the text of its BOS and EOS tokens. */
export async function modelInfo(
  path: string,
): Promise<Omit<CompletionModel, 'id' | 'ownedBy' | 'contextLength'>> {
  const file = await openGGUF(path)
  try {
    const tokens = file.metadata.get('tokenizer.ggml.tokens')
    const text = (id: number | undefined) =>
      tokens?.type === 'array' && tokens.itemType === 'string' && id !== undefined
        ? tokens.value[id]
        : undefined
    const chatTemplate = file.getString('tokenizer.chat_template')
    const bosToken = text(file.getNumber('tokenizer.ggml.bos_token_id'))
    const eosToken = text(file.getNumber('tokenizer.ggml.eos_token_id'))
    const addBosToken = file.getBoolean('tokenizer.ggml.add_bos_token')
    return {
      created: Math.floor((await stat(path)).mtimeMs / 1000),
      ...(chatTemplate === undefined ? {} : { chatTemplate }),
      ...(bosToken === undefined ? {} : { bosToken }),
      ...(eosToken === undefined ? {} : { eosToken }),
      ...(addBosToken === undefined ? {} : { addBosToken }),
    }
  } finally {
    await file.close()
  }
}
