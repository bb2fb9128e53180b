import { join } from 'node:path'
import { defineConfig } from 'vite'

// The page: web/ built into dist/web, which the agent serves at `/`, `/chat` and `/assets/*`
// (dashboardApp in src/server.ts). Everything is bundled: the page loads nothing but the agent.
export default defineConfig({
  root: join(import.meta.dirname, 'web'),
  base: '/',
  // Preact's automatic JSX runtime (Vite 8 transforms with Oxc, the successor of its esbuild step).
  oxc: { jsx: { runtime: 'automatic', importSource: 'preact' } },
  build: {
    outDir: join(import.meta.dirname, 'dist', 'web'),
    // Only dist/web: dist/ also holds the server side that tsup built.
    emptyOutDir: true,
    assetsDir: 'assets',
    target: 'es2022',
  },
  logLevel: 'warn',
})
