import { readdirSync, readFileSync } from 'node:fs'
import { availableParallelism } from 'node:os'
import { join } from 'node:path'
import { defineConfig } from 'vitest/config'

// One vitest project per workspace package, tested from src/ without a build step: the
// `meshnet-source` export condition points every @meshnet/* import at the package's TypeScript.
const conditions = ['meshnet-source', 'module', 'node', 'development|production']

const projects = ['packages', 'apps'].flatMap((group) =>
  readdirSync(group).map((dir) => {
    const root = join(group, dir)
    const { name } = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { name: string }
    return {
      extends: true as const,
      test: { name, root, include: ['src/**/*.test.ts', 'test/**/*.test.ts'] },
    }
  }),
)

export default defineConfig({
  resolve: { conditions },
  ssr: { resolve: { conditions, externalConditions: ['meshnet-source'] } },
  test: {
    projects,
    // Integration tests run agents as processes, several files at once on a 2-core CI machine: the
    // budget is for a test that hangs, not a speed target (speed is measured in bench/).
    testTimeout: 90_000,
    hookTimeout: 90_000,
    pool: 'forks',
    // Two files at a time even on 2 cores (vitest's default there is one): the integration tests
    // spend much of their time waiting on processes, beacons and timers, and one file at a time
    // kept CI's two cores 56% busy (measured: 3 agent-test files 234 s alone, 151 s two at once).
    maxWorkers: Math.max(2, availableParallelism() - 1),
  },
})
