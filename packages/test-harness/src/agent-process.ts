import { type ChildProcess, spawn } from 'node:child_process'
import { once } from 'node:events'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { MESH_BIN } from './mesh-cli.ts'

export interface AgentProcess {
  readonly process: ChildProcess
  /** Everything the agent printed so far (stdout and stderr). */
  output(): string
  /** SIGTERM and wait for a clean exit; returns the exit code. */
  stop(): Promise<number | null>
  /** SIGKILL (a crash). */
  kill(): Promise<void>
}

export interface AgentProcessOptions {
  /** Variables set over this process's environment (default `{ MESH_LOG: 'debug' }`). */
  env?: Record<string, string>
  /** How long the control API may take to come up (default 15 s). */
  timeoutMs?: number
}

/**
 * Starts `mesh start` as a real child process and waits until its control API is up (`agent.json`,
 * which the agent writes last, polled every 25 ms).
 */
export async function startAgentProcess(
  dataDir: string,
  args: string[] = [],
  { env = { MESH_LOG: 'debug' }, timeoutMs = 15_000 }: AgentProcessOptions = {},
): Promise<AgentProcess> {
  const child = spawn(
    process.execPath,
    ['--conditions=meshnet-source', MESH_BIN, 'start', '--data-dir', dataDir, ...args],
    {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  )
  let output = ''
  child.stdout!.on('data', (chunk) => (output += chunk))
  child.stderr!.on('data', (chunk) => (output += chunk))
  const exited = once(child, 'exit')
  const agent: AgentProcess = {
    process: child,
    output: () => output,
    async stop() {
      if (child.exitCode !== null) return child.exitCode
      child.kill('SIGTERM')
      const [code] = await exited
      return code as number | null
    },
    async kill() {
      if (child.exitCode !== null) return
      child.kill('SIGKILL')
      await exited
    },
  }
  for (const deadline = Date.now() + timeoutMs; Date.now() < deadline; ) {
    if (child.exitCode !== null) throw new Error(`agent exited early (code ${child.exitCode}):\n${output}`)
    try {
      // This agent's, not one a killed agent left behind.
      const info = JSON.parse(await readFile(join(dataDir, 'agent.json'), 'utf8')) as { pid?: number }
      if (info.pid !== child.pid) throw new Error('agent.json of another process')
      return agent
    } catch {
      await new Promise((resolve) => setTimeout(resolve, 25))
    }
  }
  await agent.kill()
  throw new Error(`agent did not start within ${timeoutMs / 1000} s:\n${output}`)
}

/** A UDP port for one test's beacons, so that test files running side by side do not hear each other. */
export function beaconPort(): string {
  return String(43_000 + Math.floor(Math.random() * 10_000))
}

/** Calls the agent's control API directly (faster than a `mesh` process per poll). */
export async function agentRequest<T = unknown>(dataDir: string, path: string): Promise<T> {
  const info = JSON.parse(await readFile(join(dataDir, 'agent.json'), 'utf8')) as { port: number }
  const token = (await readFile(join(dataDir, 'control.token'), 'utf8')).trim()
  const response = await fetch(`http://127.0.0.1:${info.port}${path}`, {
    headers: { authorization: `Bearer ${token}` },
  })
  return (await response.json()) as T
}
