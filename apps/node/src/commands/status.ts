import { printFields, printJson } from '@meshnet/core'
import { dataDirLayout } from '@meshnet/identity'
import type { Command } from 'commander'
import { connectAgent } from '../agent/control-api.ts'
import type { CommandContext } from '../context.ts'

interface AgentStatus {
  nodeId: string
  name: string
  networkId: string
  version: string
  pid: number
  startedAt: string
  libp2p?: { addresses: string[]; connections: number }
  jobs?: {
    model: { name: string; sha256: string } | null
    public: boolean
    running: number
    jobs: number
    failed: number
  }
  api?: { host: string; port: number } | null
  dashboard?: { url: string | null }
  controlPlane?: { url: string; registered: boolean; failures: number; jobsRun: number }
}

export function registerStatus(program: Command, context: (cmd: Command) => CommandContext): void {
  program
    .command('status')
    .description('show what the running agent on this data dir is doing')
    .action(async (_flags: unknown, cmd: Command) => {
      const ctx = context(cmd)
      const agent = await connectAgent(dataDirLayout(ctx.dataDir))
      const status = await agent.request<AgentStatus & Record<string, unknown>>('GET', '/status')
      if (ctx.json) return printJson(ctx.io, status)
      printFields(ctx.io, [
        ['Node ID', status.nodeId],
        ['Name', status.name],
        ['Network ID', status.networkId],
        ['Agent', `pid ${status.pid}, version ${status.version}, up since ${status.startedAt}`],
        ['Connections', status.libp2p?.connections],
        [
          'Model',
          status.jobs?.model
            ? `${status.jobs.model.name} (sha256 ${status.jobs.model.sha256.slice(0, 12)}…)`
            : 'none',
        ],
        [
          'Jobs',
          status.jobs
            ? `${status.jobs.jobs} run (${status.jobs.failed} failed), ${status.jobs.running} running${status.jobs.public ? ', public' : ''}`
            : undefined,
        ],
        ['OpenAI API', status.api ? `http://${status.api.host}:${status.api.port}/v1` : undefined],
        [
          'Dashboard',
          status.dashboard?.url ? `${status.dashboard.url} (mesh dashboard prints its link)` : undefined,
        ],
        [
          'Control plane',
          status.controlPlane
            ? `${status.controlPlane.url} (${status.controlPlane.registered ? 'registered' : 'not registered'}, ${status.controlPlane.jobsRun} jobs, ${status.controlPlane.failures} failures)`
            : undefined,
        ],
      ])
      for (const address of status.libp2p?.addresses ?? []) ctx.io.stdout.write(`  ${address}\n`)
    })

  program
    .command('info')
    .description('print this node’s id and, when its agent runs, the full multiaddrs to give to others')
    .action(async (_flags: unknown, cmd: Command) => {
      const ctx = context(cmd)
      const layout = dataDirLayout(ctx.dataDir)
      const { loadIdentity } = await import('@meshnet/identity')
      const { identity } = await loadIdentity(layout.identityKey)
      let addresses: string[] | undefined
      try {
        const agent = await connectAgent(layout)
        addresses = (await agent.request<AgentStatus>('GET', '/status')).libp2p?.addresses ?? []
      } catch (err) {
        if ((err as Error).name !== 'AgentNotRunningError') throw err
      }
      if (ctx.json)
        return printJson(ctx.io, {
          nodeId: identity.nodeId,
          agentRunning: addresses !== undefined,
          addresses: addresses ?? [],
        })
      printFields(ctx.io, [['Node ID', identity.nodeId]])
      if (addresses === undefined)
        ctx.io.stdout.write('Addresses: none (no agent is running; start one with `mesh start`)\n')
      else for (const address of addresses) ctx.io.stdout.write(`${address}\n`)
    })
}
