import { printFields, printJson } from '@meshnet/core'
import { dataDirLayout } from '@meshnet/identity'
import type { Command } from 'commander'
import { connectAgent } from '../agent/control-api.ts'
import type { CommandContext } from '../context.ts'

interface RingStatus {
  poolId: string
  epoch: number
  converged: boolean
  /** When the agent joined the ring and when it saw it converge, ms since the epoch. */
  joinedAt?: number
  convergedAt?: number
  model: { name: string; layers: number } | null
  planProblem?: string
  ready: boolean
  members: Array<{
    nodeId: string
    position: number
    addresses: string[]
    capacityBytes: number
    shard: {
      layers: [number, number]
      load: 'pending' | 'fetching' | 'loading' | 'ready' | 'failed'
      bytes?: number
      loadedBytes?: number
      error?: string
    } | null
  }>
}

const mib = (bytes: number) => `${Math.round(bytes / 2 ** 20)} MiB`

/**
 * `layers 0–15, 2101 MiB, ready` (or fetching or loading with its percentage, or why it failed).
 * While fetching, the bytes are those the member fetches (its shard's chunks it did not hold).
 */
function describeShard(shard: NonNullable<RingStatus['members'][number]['shard']>): string {
  const layers = `layers ${shard.layers[0]}–${shard.layers[1] - 1}`
  const bytes = shard.bytes === undefined ? '' : `, ${mib(shard.bytes)}`
  const state =
    (shard.load === 'loading' || shard.load === 'fetching') && shard.bytes
      ? `${shard.load} ${Math.floor((100 * (shard.loadedBytes ?? 0)) / shard.bytes)}%`
      : shard.load === 'failed'
        ? `FAILED: ${shard.error ?? 'unknown error'}`
        : shard.load
  return `${layers}${bytes}, ${state}`
}

interface PoolPeers {
  poolId: string
  peers: Array<{ nodeId: string; addresses: string[]; online: boolean; lastSeen: string; trust: number }>
}

/** The pool to show: the one given, or the only ring the agent has. */
async function ringsToShow(ctx: CommandContext, poolId: string | undefined): Promise<RingStatus[]> {
  const agent = await connectAgent(dataDirLayout(ctx.dataDir))
  if (poolId !== undefined)
    return [await agent.request<RingStatus>('GET', `/rings/${encodeURIComponent(poolId)}`)]
  return (await agent.request<{ rings: RingStatus[] }>('GET', '/rings')).rings
}

export function registerRing(program: Command, context: (cmd: Command) => CommandContext): void {
  program
    .command('ring-status')
    .description('show the ring the running agent agreed on: epoch, convergence, members and their shards')
    .option('--pool-id <id>', 'the pool (default: every pool this node is in)')
    .action(async (flags: { poolId?: string }, cmd: Command) => {
      const ctx = context(cmd)
      const rings = await ringsToShow(ctx, flags.poolId)
      const shaped = rings.map((r) => ({
        poolId: r.poolId,
        epoch: r.epoch,
        converged: r.converged,
        ...(r.joinedAt === undefined ? {} : { joinedAt: r.joinedAt }),
        ...(r.convergedAt === undefined ? {} : { convergedAt: r.convergedAt }),
        ready: r.ready,
        ...(r.planProblem ? { planProblem: r.planProblem } : {}),
        members: r.members.map((m) => ({
          nodeId: m.nodeId,
          position: m.position,
          capacityBytes: m.capacityBytes,
          shard: m.shard,
        })),
      }))
      if (ctx.json) return printJson(ctx.io, flags.poolId !== undefined ? shaped[0] : { rings: shaped })
      if (rings.length === 0)
        return void ctx.io.stdout.write('No rings: this node belongs to no pool (mesh pool-list).\n')
      for (const ring of rings) {
        ctx.io.stdout.write(
          `Pool ${ring.poolId}: epoch ${ring.epoch}, ${ring.converged ? 'converged' : 'NOT converged'}${ring.ready ? ', ready' : ''}\n`,
        )
        if (ring.model)
          ctx.io.stdout.write(
            `Model ${ring.model.name} (${ring.model.layers} layers)${ring.planProblem ? `: ${ring.planProblem}` : ''}\n`,
          )
        for (const m of ring.members) {
          const shard = m.shard ? describeShard(m.shard) : 'no shard'
          ctx.io.stdout.write(
            `  ${String(m.position).padStart(2)}  ${m.nodeId}  offers ${mib(m.capacityBytes)}  ${shard}\n`,
          )
        }
      }
    })

  program
    .command('pool-peers')
    .description(
      'list the peers of a pool the running agent knows: addresses, ONLINE/OFFLINE, last seen, trust',
    )
    .requiredOption('--pool-id <id>', 'the pool')
    .action(async (flags: { poolId: string }, cmd: Command) => {
      const ctx = context(cmd)
      const agent = await connectAgent(dataDirLayout(ctx.dataDir))
      const result = await agent.request<PoolPeers>('GET', `/pools/${encodeURIComponent(flags.poolId)}/peers`)
      if (ctx.json) return printJson(ctx.io, result)
      if (result.peers.length === 0) return void ctx.io.stdout.write('No peers seen yet in this pool.\n')
      for (const peer of result.peers) {
        const relay = peer.addresses.filter((a) => a.includes('/p2p-circuit'))
        const lan = peer.addresses.filter((a) => !a.includes('/p2p-circuit'))
        ctx.io.stdout.write(`${peer.online ? 'ONLINE ' : 'OFFLINE'}  ${peer.nodeId}\n`)
        printFields(ctx.io, [
          ['  Last seen', peer.lastSeen],
          ['  Trust', peer.trust.toFixed(2)],
          ['  LAN', lan.join(' ') || '-'],
          ['  Relay', relay.join(' ') || '-'],
        ])
      }
    })

  program
    .command('pool-status')
    .description('summarise every pool on this node: role, certificate, ring epoch and members online')
    .action(async (_flags: unknown, cmd: Command) => {
      const ctx = context(cmd)
      const agent = await connectAgent(dataDirLayout(ctx.dataDir))
      const { rings } = await agent.request<{ rings: RingStatus[] }>('GET', '/rings')
      const status = await agent.request<{
        libp2p?: { connections: number }
        pools?: { administered: string[] }
      }>('GET', '/status')
      const pools = rings.map((r) => ({
        poolId: r.poolId,
        admin: status.pools?.administered.includes(r.poolId) ?? false,
        epoch: r.epoch,
        converged: r.converged,
        membersOnline: r.members.length,
      }))
      if (ctx.json) return printJson(ctx.io, { connections: status.libp2p?.connections ?? 0, pools })
      if (pools.length === 0) ctx.io.stdout.write('This node belongs to no pool.\n')
      for (const p of pools) {
        printFields(ctx.io, [
          ['Pool', `${p.poolId}${p.admin ? ' (admin)' : ''}`],
          [
            'Ring',
            `epoch ${p.epoch}, ${p.converged ? 'converged' : 'not converged'}, ${p.membersOnline} members online`,
          ],
        ])
      }
    })
}
