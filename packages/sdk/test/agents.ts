import { type ChildProcess, spawn } from 'node:child_process'
import { once } from 'node:events'
import { access, readFile } from 'node:fs/promises'
import { join } from 'node:path'

export { createModel, MESH_BIN, type MeshResult, runMesh } from '@meshnet/test-harness'

import { MESH_BIN } from '@meshnet/test-harness'

export interface Agent {
  readonly dataDir: string
  readonly nodeId: string
  /** libp2p addresses, each ending in /p2p/<node id>. */
  readonly addresses: string[]
  output(): string
  /** Calls the agent's control API on 127.0.0.1. */
  request<T>(path: string): Promise<T>
  stop(): Promise<void>
}

/** Starts `mesh start <args> --data-dir <dataDir>` and waits for its control API. */
export async function startAgent(dataDir: string, args: string[]): Promise<Agent> {
  const child: ChildProcess = spawn(
    process.execPath,
    ['--conditions=meshnet-source', MESH_BIN, 'start', '--data-dir', dataDir, ...args],
    { env: { ...process.env, MESH_LOG: 'info' }, stdio: ['ignore', 'pipe', 'pipe'] },
  )
  let output = ''
  child.stdout!.on('data', (chunk) => (output += chunk))
  child.stderr!.on('data', (chunk) => (output += chunk))
  const exited = once(child, 'exit')
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return
    child.kill('SIGTERM')
    await exited
  }
  const request = async <T>(path: string): Promise<T> => {
    const info = JSON.parse(await readFile(join(dataDir, 'agent.json'), 'utf8')) as { port: number }
    const token = (await readFile(join(dataDir, 'control.token'), 'utf8')).trim()
    const response = await fetch(`http://127.0.0.1:${info.port}${path}`, {
      headers: { authorization: `Bearer ${token}` },
    })
    return (await response.json()) as T
  }
  for (let i = 0; i < 600; i++) {
    if (child.exitCode !== null) throw new Error(`agent exited early (code ${child.exitCode}):\n${output}`)
    try {
      await access(join(dataDir, 'agent.json'))
      const status = await request<{ nodeId: string; libp2p: { addresses: string[] } }>('/status')
      return {
        dataDir,
        nodeId: status.nodeId,
        addresses: status.libp2p.addresses.filter((a) => !a.includes('/ws/')),
        output: () => output,
        request,
        stop,
      }
    } catch {
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
  }
  await stop()
  throw new Error(`agent did not start within 30 s:\n${output}`)
}
