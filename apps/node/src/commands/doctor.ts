import type { CliIo } from '@meshnet/core'
import { printJson } from '@meshnet/core'
import { type ClassifiedAddress, type Diagnosis, describeUpnp, type LinkKind } from '@meshnet/discovery'
import { dataDirLayout } from '@meshnet/identity'
import type { Command } from 'commander'
import { connectAgent } from '../agent/control-api.ts'
import type { CommandContext } from '../context.ts'

/** Pings take at most 3 s each and run in parallel: the agent answers well within this. */
const DOCTOR_REQUEST_MS = 20_000

export function registerDoctor(program: Command, context: (cmd: Command) => CommandContext): void {
  program
    .command('doctor')
    .description(
      'diagnose connectivity: addresses, NAT type, UPnP, relays, each peer’s link and round trip, and what to do',
    )
    .action(async (_flags: unknown, cmd: Command) => {
      const ctx = context(cmd)
      const agent = await connectAgent(dataDirLayout(ctx.dataDir))
      const report = await agent.request<Diagnosis>('GET', '/doctor', undefined, DOCTOR_REQUEST_MS)
      if (ctx.json) return printJson(ctx.io, report)
      printDiagnosis(ctx.io, report)
    })
}

const KIND: Record<ClassifiedAddress['kind'], string> = {
  loopback: 'loopback',
  lan: 'LAN',
  public: 'public',
  relayed: 'relayed',
  other: 'other',
}

const LINK: Record<LinkKind, string> = { lan: 'LAN', direct: 'direct', relayed: 'relayed', none: 'none' }

/** The report for a person: this node, its peers, then the next steps. */
export function printDiagnosis(io: CliIo, report: Diagnosis): void {
  const out = (line = '') => io.stdout.write(`${line}\n`)
  const field = (label: string, value: string) => out(`  ${label.padEnd(10)} ${value}`)
  // Announced addresses all end in this node's id, printed once at the top.
  const self = `/p2p/${report.nodeId}`
  const shown = (address: string) => (address.endsWith(self) ? address.slice(0, -self.length) : address)
  const addresses = (label: string, list: ClassifiedAddress[]) => {
    if (list.length === 0) return field(label, 'none')
    const width = Math.max(...list.map((a) => shown(a.address).length))
    list.forEach((a, i) => {
      const notes = [KIND[a.kind], a.kind === 'public' && !a.verified ? 'not confirmed' : ''].filter(Boolean)
      field(i === 0 ? label : '', `${shown(a.address).padEnd(width)}  ${notes.join(', ')}`)
    })
  }

  out(`This node ${report.nodeId}`)
  addresses('Listen', report.listen)
  addresses('Announced', report.announced)
  field('NAT', `${report.nat.type}: ${report.nat.evidence}`)
  field('AutoNAT', report.nat.autoNAT === null ? 'off' : `on (${report.nat.autoNAT})`)
  field('UPnP', describeUpnp(report.upnp))
  const { configured, reserved } = report.relays
  field(
    'Relays',
    configured.length === 0
      ? 'none given (mesh start --relay <addr>)'
      : `${configured.length} given, reservation on ${reserved.length === 0 ? 'none' : reserved.join(', ')}`,
  )
  field(
    'Reachable',
    report.publiclyReachable ? 'yes, on a confirmed public address' : 'not confirmed from outside',
  )
  out()

  const connected = report.peers.filter((p) => p.link !== 'none').length
  const absent = report.peers.length - connected
  out(
    `Peers: ${connected} connected${absent > 0 ? `, ${absent} ${absent === 1 ? 'member' : 'members'} not connected` : ''}`,
  )
  if (report.peers.length > 0) {
    const rows = report.peers.map((p) => [
      `${p.nodeId}${p.relay ? ' (relay)' : p.member ? ' (member)' : ''}`,
      LINK[p.link],
      p.rttMs === null ? '–' : `${formatMs(p.rttMs)} ms`,
      p.address?.replace(/\/p2p\/[^/]+$/, '') ?? p.error ?? '',
    ])
    const header = ['NODE', 'LINK', 'RTT', 'ADDRESS']
    const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)))
    for (const row of [header, ...rows]) {
      out(
        `  ${row.map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i]!))).join('  ')}`.trimEnd(),
      )
    }
  }
  out()

  if (report.advice.length === 0) {
    out('Next steps: none, nothing looks wrong.')
    return
  }
  out('Next steps')
  for (const advice of report.advice) out(`  ${advice.severity === 'warning' ? '!' : '-'} ${advice.message}`)
}

/** `0.4`, `3`, `48`: a tenth of a millisecond below 10 ms when the figure has one. */
function formatMs(ms: number): string {
  return ms < 10 && !Number.isInteger(ms) ? ms.toFixed(1) : String(Math.round(ms))
}
