import { access, readFile, realpath } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { packageDir, SDK_FORBIDDEN_DEPENDENCIES } from '@meshnet/test-harness'
import { expect, it } from 'vitest'

// An app that installs only @meshnet/sdk must not receive an inference runtime or gossipsub: the SDK
// speaks protocols. Walks the production dependencies as installed in this workspace.

async function productionClosure(dir: string, seen = new Map<string, string[]>(), path: string[] = []) {
  const pkg = JSON.parse(await readFile(join(dir, 'package.json'), 'utf8')) as {
    name: string
    dependencies?: Record<string, string>
    optionalDependencies?: Record<string, string>
  }
  if (seen.has(pkg.name)) return seen
  seen.set(pkg.name, [...path, pkg.name])
  for (const dep of Object.keys({ ...pkg.dependencies, ...pkg.optionalDependencies })) {
    const depDir = await locate(await realpath(dir), dep)
    if (depDir === undefined) continue // an optional dependency for another platform
    await productionClosure(depDir, seen, [...path, pkg.name])
  }
  return seen
}

/** Node's own lookup: `node_modules/<name>` in the package's folder, then in each folder above it. */
async function locate(from: string, name: string): Promise<string | undefined> {
  for (let dir = from; ; dir = dirname(dir)) {
    const candidate = join(dir, 'node_modules', name)
    try {
      await access(join(candidate, 'package.json'))
      return candidate
    } catch {}
    if (dirname(dir) === dir) return undefined
  }
}

it('reaches no inference runtime and no gossipsub through its production dependencies', async () => {
  const closure = await productionClosure(packageDir('@meshnet/sdk'))
  expect(closure.size).toBeGreaterThan(20)
  expect(closure.has('@meshnet/discovery')).toBe(true)
  const reached = SDK_FORBIDDEN_DEPENDENCIES.filter((name) => closure.has(name)).map((name) =>
    closure.get(name)!.join(' → '),
  )
  expect(reached).toEqual([])
})
