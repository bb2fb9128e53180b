import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { type GenerateModelOptions, generateModel } from '@meshnet/gguf'

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
