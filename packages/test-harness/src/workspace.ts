import { existsSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'

/** The workspace this harness sits in: the nearest folder above it that holds `pnpm-workspace.yaml`. */
export const REPO_ROOT: string = (() => {
  for (let dir = import.meta.dirname; ; dir = dirname(dir)) {
    if (existsSync(join(dir, 'pnpm-workspace.yaml'))) return dir
    if (dirname(dir) === dir) throw new Error(`no pnpm-workspace.yaml above ${import.meta.dirname}`)
  }
})()

const APPS = new Set(['@meshnet/node', '@meshnet/relay', '@meshnet/control-plane'])

/** Where a workspace package lives: apps/<name> for the programs, packages/<name> for libraries. */
export function packageDir(name: string): string {
  return join(REPO_ROOT, APPS.has(name) ? 'apps' : 'packages', name.replace('@meshnet/', ''))
}

/** `name` and the @meshnet packages it needs at run time (production dependencies), dependencies first. */
export async function meshnetClosure(name: string, seen = new Set<string>()): Promise<string[]> {
  const pkg = JSON.parse(await readFile(join(packageDir(name), 'package.json'), 'utf8')) as {
    dependencies?: Record<string, string>
  }
  const order: string[] = []
  for (const dep of Object.keys(pkg.dependencies ?? {}).filter((d) => d.startsWith('@meshnet/'))) {
    if (seen.has(dep)) continue
    seen.add(dep)
    order.push(...(await meshnetClosure(dep, seen)))
  }
  seen.add(name)
  return [...order, name]
}

/**
 * What an app that installs only `@meshnet/sdk` must not receive: an inference runtime, gossipsub,
 * or the packages that carry them. `packages/sdk/test/dependencies.test.ts` holds the rule,
 * `bench/sdk-install.bench.ts` measures the install.
 */
export const SDK_FORBIDDEN_DEPENDENCIES: readonly string[] = [
  'node-llama-cpp',
  '@libp2p/gossipsub',
  '@meshnet/engine',
  '@meshnet/llama-cpp',
  '@meshnet/shards',
]
