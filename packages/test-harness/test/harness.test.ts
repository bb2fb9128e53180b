import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { eventually } from '../src/eventually.ts'
import { MESH_BIN } from '../src/mesh-cli.ts'
import { meshnetClosure, packageDir, REPO_ROOT } from '../src/workspace.ts'

describe('the workspace', () => {
  it('finds the repository root and the mesh CLI source from its own location', () => {
    expect(existsSync(join(REPO_ROOT, 'pnpm-workspace.yaml'))).toBe(true)
    expect(MESH_BIN).toBe(join(REPO_ROOT, 'apps', 'node', 'src', 'bin.ts'))
    expect(existsSync(MESH_BIN)).toBe(true)
  })

  it('places programs under apps/ and libraries under packages/', () => {
    expect(packageDir('@meshnet/relay')).toBe(join(REPO_ROOT, 'apps', 'relay'))
    expect(packageDir('@meshnet/gguf')).toBe(join(REPO_ROOT, 'packages', 'gguf'))
  })

  it('lists the @meshnet packages a package needs at run time, dependencies first', async () => {
    const closure = await meshnetClosure('@meshnet/pool')
    expect(closure.at(-1)).toBe('@meshnet/pool')
    expect(closure).toContain('@meshnet/core')
    expect(closure.indexOf('@meshnet/core')).toBeLessThan(closure.indexOf('@meshnet/identity'))
    expect(new Set(closure).size).toBe(closure.length)
  })
})

describe('eventually', () => {
  it('returns the first value other than undefined, null or false, retrying past a throw', async () => {
    const answers = [undefined, null, false, 'boom', 'ready']
    const value = await eventually(
      'the fifth answer',
      () => {
        const next = answers.shift()
        if (next === 'boom') throw new Error('not yet')
        return next
      },
      5_000,
      1,
    )
    expect(value).toBe('ready')
  })

  it('names what it waited for and the last error when time runs out', async () => {
    await expect(
      eventually(
        'a thing that never comes',
        () => {
          throw new Error('still broken')
        },
        30,
        5,
      ),
    ).rejects.toThrow('timed out waiting for a thing that never comes: still broken')
  })
})
