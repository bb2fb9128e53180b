import { defineConfig } from 'tsup'

export default defineConfig({
  entry: ['src/bin.ts', 'src/index.ts'],
  format: ['esm'],
  dts: { entry: 'src/index.ts' },
  clean: true,
  target: 'node24',
  // Keep `node:` in imports: node:sqlite exists only under that name.
  removeNodeProtocol: false,
})
