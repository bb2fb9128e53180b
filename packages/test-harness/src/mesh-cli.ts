import { execFile } from 'node:child_process'
import { join } from 'node:path'
import { packageDir } from './workspace.ts'

/** The `mesh` CLI of this workspace, run from source (`--conditions=meshnet-source`). */
export const MESH_BIN = join(packageDir('@meshnet/node'), 'src', 'bin.ts')

export interface MeshResult {
  code: number
  stdout: string
  stderr: string
}

/** Runs the real `mesh` CLI from source in a child process (`timeout` 0: no limit). */
export function runMesh(
  args: string[],
  env: Record<string, string> = {},
  timeout = 60_000,
): Promise<MeshResult> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ['--conditions=meshnet-source', MESH_BIN, ...args],
      { env: { ...process.env, MESH_LOG: '', ...env }, timeout },
      (error, stdout, stderr) => {
        const code = error === null ? 0 : typeof error.code === 'number' ? error.code : 1
        resolve({ code, stdout, stderr })
      },
    )
  })
}

/**
 * Writes a generated llama model with `mesh model-create --out <out>` and the given options
 * (`{ layers: 2, embd: 256 }` → `--layers 2 --embd 256`); throws with the CLI's stderr on failure.
 */
export async function createModel(out: string, options: Record<string, string | number>): Promise<void> {
  const args = ['model-create', '--out', out]
  for (const [name, value] of Object.entries(options)) {
    args.push(`--${name.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`, String(value))
  }
  const result = await runMesh(args)
  if (result.code !== 0) throw new Error(`mesh model-create failed (${result.code}): ${result.stderr}`)
}
