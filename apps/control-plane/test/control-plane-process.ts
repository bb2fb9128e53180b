import { type ChildProcess, execFile, spawn } from 'node:child_process'
import { once } from 'node:events'
import { join } from 'node:path'

export const BIN = join(import.meta.dirname, '..', 'src', 'bin.ts')

/** Runs `mesh-control-plane` from source to its end (for --help, --version, refusals). */
export function runControlPlane(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ['--conditions=meshnet-source', BIN, ...args],
      { env: { ...process.env, MESH_LOG: '' }, timeout: 60_000 },
      (error, stdout, stderr) => {
        const code = error === null ? 0 : typeof error.code === 'number' ? error.code : 1
        resolve({ code, stdout, stderr })
      },
    )
  })
}

export interface ControlPlaneProcess {
  readonly process: ChildProcess
  /** The first stdout line: with --json, `{"url","port","tokenFile"}`. */
  readonly firstLine: string
  output(): { stdout: string; stderr: string }
  /** Sends `signal` and waits for the exit code. */
  stop(signal?: NodeJS.Signals): Promise<number | null>
}

/** Starts a real `mesh-control-plane` process and waits until it printed its first line (it listens). */
export async function startControlPlaneProcess(args: string[]): Promise<ControlPlaneProcess> {
  const child = spawn(process.execPath, ['--conditions=meshnet-source', BIN, ...args], {
    env: { ...process.env, MESH_LOG: 'info' },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let stdout = ''
  let stderr = ''
  child.stderr!.on('data', (chunk) => (stderr += chunk))
  const exited = once(child, 'exit')
  const firstLine = await new Promise<string>((resolve, reject) => {
    child.stdout!.on('data', (chunk) => {
      stdout += chunk
      const end = stdout.indexOf('\n')
      if (end !== -1) resolve(stdout.slice(0, end))
    })
    child.once('exit', (code) =>
      reject(new Error(`control plane exited early (code ${code}):\n${stdout}${stderr}`)),
    )
  })
  return {
    process: child,
    firstLine,
    output: () => ({ stdout, stderr }),
    async stop(signal = 'SIGTERM') {
      if (child.exitCode !== null) return child.exitCode
      child.kill(signal)
      const [code] = await exited
      return code as number | null
    },
  }
}

/** A base port for one test, far from 8080 and from other test files' ports. */
export function basePort(): number {
  return 20_000 + Math.floor(Math.random() * 40_000)
}
