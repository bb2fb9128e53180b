import { defineConfig } from 'tsup'

export default defineConfig({
  entry: ['src/index.ts'],
  format: ['esm'],
  dts: true,
  clean: true,
  target: 'node24',
  // Keep `node:` in imports: node:sqlite exists only under that name.
  removeNodeProtocol: false,
})
