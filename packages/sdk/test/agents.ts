import { agentRequest, startAgentProcess } from '@meshnet/test-harness'

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
  const agent = await startAgentProcess(dataDir, args, { env: { MESH_LOG: 'info' }, timeoutMs: 30_000 })
  const request = <T>(path: string) => agentRequest<T>(dataDir, path)
  try {
    const status = await request<{ nodeId: string; libp2p: { addresses: string[] } }>('/status')
    return {
      dataDir,
      nodeId: status.nodeId,
      addresses: status.libp2p.addresses.filter((a) => !a.includes('/ws/')),
      output: agent.output,
      request,
      stop: async () => void (await agent.stop()),
    }
  } catch (err) {
    await agent.kill()
    throw err
  }
}
