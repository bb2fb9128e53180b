import { defineConfig } from 'tsup'

// The server side only; `vite build` then writes the page to dist/web (after this, since clean
// empties dist).
export default defineConfig({
  entry: ['src/index.ts'],
  format: ['esm'],
  dts: true,
  clean: true,
  target: 'node24',
  removeNodeProtocol: false,
})
