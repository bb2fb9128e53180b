import { defineConfig } from 'tsup'

export default defineConfig({
  entry: ['src/bin.ts', 'src/relay.ts'],
  format: ['esm'],
  dts: { entry: 'src/relay.ts' },
  clean: true,
  target: 'node24',
  // Keep `node:` in imports: node:sqlite exists only under that name.
  removeNodeProtocol: false,
})
