import { execFile } from 'node:child_process'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { stripTypeScriptTypes } from 'node:module'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { nodeVersionProblem } from '@meshnet/core'
import { REPO_ROOT } from '@meshnet/test-harness'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { olderNode } from './older-node.ts'

// Each program's entry (apps/*/src/bin.ts) run by the machine's older Node, outside the workspace:
// it must print what it needs and exit 1 without loading anything. A static import in it would fail
// here first (nothing resolves from the temp dir), and so would syntax that Node 20 cannot parse.
// registry-install.test.ts does the same with the programs installed from a registry.

const exec = promisify(execFile)
const oldNode = await olderNode()

const PROGRAMS = [
  { command: 'mesh', packageName: '@meshnet/node', dir: 'apps/node' },
  { command: 'mesh-relay', packageName: '@meshnet/relay', dir: 'apps/relay' },
  { command: 'mesh-control-plane', packageName: '@meshnet/control-plane', dir: 'apps/control-plane' },
]

let dir: string
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'meshnet-bin-'))
})
afterAll(async () => {
  await rm(dir, { recursive: true, force: true })
})

describe.skipIf(oldNode === undefined)(`the programs run by an older Node.js (${oldNode?.version})`, () => {
  it.each(PROGRAMS)(
    '$command names the Node.js it needs and exits 1 before loading anything',
    async (program) => {
      const file = join(dir, `${program.command}.mjs`)
      await writeFile(
        file,
        stripTypeScriptTypes(await readFile(join(REPO_ROOT, program.dir, 'src', 'bin.ts'), 'utf8')),
      )
      const result = await exec(oldNode!.path, [file, '--version'], { cwd: dir }).then(
        ({ stdout, stderr }) => ({ code: 0, stdout, stderr }),
        (err: { code: number; stdout: string; stderr: string }) => err,
      )
      expect(result.stderr).toBe(`${nodeVersionProblem(program, oldNode!.version)}\n`)
      expect(result.stdout).toBe('')
      expect(result.code).toBe(1)
    },
  )
})
