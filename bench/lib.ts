// Shared helpers for benchmarks: run the real `mesh` CLI and agents from source, summarise samples.
import { type ChildProcess, execFile, spawn } from 'node:child_process'
import { access } from 'node:fs/promises'
import { join } from 'node:path'

export const MESH_BIN = join(import.meta.dirname, '..', 'apps', 'node', 'src', 'bin.ts')
const NODE_ARGS = ['--conditions=meshnet-source', MESH_BIN]

export function mesh(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [...NODE_ARGS, ...args],
      { env: { ...process.env, MESH_LOG: '' } },
      (error, stdout, stderr) =>
        resolve({
          code: error === null ? 0 : typeof error.code === 'number' ? error.code : 1,
          stdout,
          stderr,
        }),
    )
  })
}

export async function meshJson<T>(args: string[]): Promise<T> {
  const result = await mesh([...args, '--json'])
  if (result.code !== 0) throw new Error(`mesh ${args.join(' ')}: ${result.stderr}`)
  return JSON.parse(result.stdout) as T
}

/** Starts `mesh start` and resolves once its control API is up. */
export async function startAgent(dataDir: string, args: string[]): Promise<ChildProcess> {
  const child = spawn(process.execPath, [...NODE_ARGS, 'start', '--data-dir', dataDir, ...args], {
    stdio: 'ignore',
  })
  for (let i = 0; i < 2400; i++) {
    try {
      await access(join(dataDir, 'agent.json'))
      return child
    } catch {
      await new Promise((resolve) => setTimeout(resolve, 25))
    }
  }
  child.kill('SIGKILL')
  throw new Error(`agent in ${dataDir} did not start`)
}

export async function stopAgent(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return
  const exited = new Promise((resolve) => child.once('exit', resolve))
  child.kill('SIGTERM')
  await exited
}

export function summary(samples: number[]): {
  n: number
  min: number
  median: number
  p90: number
  max: number
} {
  const sorted = [...samples].sort((a, b) => a - b)
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!
  return { n: sorted.length, min: sorted[0]!, median: at(0.5), p90: at(0.9), max: sorted[sorted.length - 1]! }
}

/** Prints rows as an aligned text table. */
export function table(rows: Array<Record<string, string | number>>): void {
  const columns = Object.keys(rows[0] ?? {})
  const cell = (v: string | number) =>
    typeof v === 'number' ? (Number.isInteger(v) ? String(v) : v.toFixed(2)) : v
  const widths = columns.map((c) => Math.max(c.length, ...rows.map((r) => cell(r[c]!).length)))
  const line = (values: string[]) => values.map((v, i) => v.padStart(widths[i]!)).join('  ')
  console.log(line(columns))
  console.log(line(widths.map((w) => '-'.repeat(w))))
  for (const row of rows) console.log(line(columns.map((c) => cell(row[c]!))))
}
