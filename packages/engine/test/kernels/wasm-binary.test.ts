import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { expect, it } from 'vitest'
import { compileKernels, generatedModule } from '../../scripts/build-wasm.ts'

it('embeds the WebAssembly built from assembly/kernels.ts (rebuild: node packages/engine/scripts/build-wasm.ts)', async () => {
  const committed = readFileSync(join(import.meta.dirname, '../../src/kernels/wasm-binary.ts'), 'utf8')
  expect(committed).toBe(generatedModule(await compileKernels()))
})
