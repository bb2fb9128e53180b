import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import {
  type GenerateModelOptions,
  type GGUFTensorInput,
  type GGUFValueInput,
  generateModel,
  openGGUF,
  writeGGUF,
} from '@meshnet/gguf'

export type ModelShape = Omit<GenerateModelOptions, 'out'>

/** A temp dir of generated test models, removed by `cleanup()`. */
export async function modelDir(): Promise<{
  model(name: string, shape: ModelShape): Promise<string>
  cleanup(): Promise<void>
}> {
  const dir = await mkdtemp(join(tmpdir(), 'meshnet-inference-'))
  return {
    async model(name, shape) {
      const out = join(dir, `${name}.gguf`)
      await generateModel({ context: 512, seed: 11, ...shape, out })
      return out
    },
    cleanup: () => rm(dir, { recursive: true, force: true }),
  }
}

/**
 * A copy of the GGUF at `src` written to `out`, with `extra` metadata set (a chat template:
 * `{ 'tokenizer.chat_template': { type: 'string', value } }`). Returns `out`.
 */
export async function withMetadata(
  src: string,
  out: string,
  extra: Record<string, GGUFValueInput>,
): Promise<string> {
  const file = await openGGUF(src)
  try {
    const metadata = new Map<string, GGUFValueInput>(file.metadata)
    for (const [key, value] of Object.entries(extra)) metadata.set(key, value)
    const tensors: GGUFTensorInput[] = []
    for (const t of file.tensors) {
      tensors.push({ name: t.name, dims: t.dims, type: t.type, data: await file.readTensor(t.name) })
    }
    await writeGGUF(out, { metadata, tensors })
    return out
  } finally {
    await file.close()
  }
}

/** A copy of the GGUF at `src` with `template` as its `tokenizer.chat_template`. */
export function withChatTemplate(src: string, out: string, template: string): Promise<string> {
  return withMetadata(src, out, { 'tokenizer.chat_template': { type: 'string', value: template } })
}
