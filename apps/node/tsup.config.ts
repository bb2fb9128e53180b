import { defineConfig } from 'tsup'

export default defineConfig({
  entry: ['src/bin.ts', 'src/cli.ts'],
  format: ['esm'],
  dts: { entry: 'src/cli.ts' },
  clean: true,
  target: 'node24',
})
