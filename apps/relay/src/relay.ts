/**
 * @packageDocumentation
 * `mesh-relay`: a Meshnet node that serves others: a circuit relay v2 (nodes behind NAT reserve a
 * slot and are reached through it), a bootstrap peer, and a Kademlia DHT server. It holds its own
 * identity in its own data dir and takes part in no pool.
 */

import { join } from 'node:path'
import {
  type CliIo,
  createLogger,
  InvalidArgumentError,
  printFields,
  printJson,
  processIo,
  reportError,
  waitForSignal,
} from '@meshnet/core'
import { createMeshNode, type MeshNode } from '@meshnet/discovery'
import { ensureDataDir, loadOrCreateIdentity, resolveDataDir } from '@meshnet/identity'
import { Command, CommanderError } from 'commander'
import { z } from 'zod'
import pkg from '../package.json' with { type: 'json' }

/** Default TCP port of `mesh-relay` (as in the reference quick start). */
export const DEFAULT_RELAY_PORT = 4001

const port = z.coerce.number().int().min(0).max(65_535)
const flagsSchema = z.strictObject({
  port: port.default(DEFAULT_RELAY_PORT),
  wsPort: port.optional(),
  host: z.ipv4().default('0.0.0.0'),
  announce: z.array(z.string().startsWith('/')).default([]),
  maxReservations: z.coerce.number().int().min(1).max(100_000).optional(),
  localOnly: z.boolean().default(false),
  dataDir: z.string().optional(),
  json: z.boolean().default(false),
  verbose: z.boolean().default(false),
})
export type RelayFlags = z.infer<typeof flagsSchema>

export interface StartRelayOptions {
  dataDir: string
  port?: number
  wsPort?: number
  host?: string
  announce?: string[]
  maxReservations?: number
  localOnly?: boolean
}

/** Starts a relay node; its identity lives in `<dataDir>/identity.key`. */
export async function startRelay(options: StartRelayOptions): Promise<MeshNode> {
  const layout = await ensureDataDir(options.dataDir)
  const { identity } = await loadOrCreateIdentity(layout.identityKey)
  const host = options.localOnly ? '127.0.0.1' : (options.host ?? '0.0.0.0')
  const tcp = options.port ?? DEFAULT_RELAY_PORT
  const listen = [`/ip4/${host}/tcp/${tcp}`]
  if (options.wsPort !== undefined) listen.push(`/ip4/${host}/tcp/${options.wsPort}/ws`)
  const logger = createLogger({ app: 'relay', file: layout.log('relay') })
  return createMeshNode({
    identity,
    dataDir: layout.root,
    localOnly: options.localOnly ?? false,
    listen,
    announce: options.announce ?? [],
    websockets: options.wsPort !== undefined,
    mdns: false,
    dhtMode: 'server',
    relayServer: true,
    relayReservations: 'off',
    ...(options.maxReservations ? { relayServerLimits: { maxReservations: options.maxReservations } } : {}),
    logger,
  })
}

/** The relay's data dir: `--data-dir`, else `$MESH_DATA_DIR/relay`, else `~/.meshnet/relay`. */
export function relayDataDir(flag: string | undefined, env: Record<string, string | undefined>): string {
  return flag === undefined ? join(resolveDataDir({ env }), 'relay') : resolveDataDir({ dataDir: flag, env })
}

export function createProgram(io: CliIo = processIo): Command {
  const collect = (value: string, previous: string[] = []) => [...previous, value]
  return new Command('mesh-relay')
    .description('run a Meshnet relay: circuit relay v2, bootstrap peer and DHT server')
    .version(pkg.version, '-V, --version', 'print the version')
    .option('--port <port>', `TCP port (default ${DEFAULT_RELAY_PORT}; 0 picks a free one)`)
    .option('--ws-port <port>', 'also listen for WebSocket connections on this port')
    .option('--host <ip>', 'IPv4 address to listen on (default 0.0.0.0, every interface)')
    .option(
      '--announce <multiaddr>',
      'public address to tell peers, e.g. /ip4/203.0.113.7/tcp/4001 (repeatable)',
      collect,
    )
    .option('--max-reservations <n>', 'most nodes that may hold a relay slot at once (default 128)')
    .option('--local-only', 'listen on 127.0.0.1 only (tests, demos)')
    .option('--data-dir <path>', 'where the relay keeps its identity and logs (default ~/.meshnet/relay)')
    .option('--json', 'print machine-readable JSON')
    .option('--verbose', 'print stack traces')
    .exitOverride()
    .configureOutput({ writeOut: (t) => io.stdout.write(t), writeErr: (t) => io.stderr.write(t) })
    .action(async (raw: Record<string, unknown>) => {
      const parsed = flagsSchema.safeParse(raw)
      if (!parsed.success) {
        const issue = parsed.error.issues[0]!
        throw new InvalidArgumentError(
          `--${String(issue.path[0] ?? '').replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}: ${issue.message}`,
        )
      }
      const flags = parsed.data
      const dataDir = relayDataDir(flags.dataDir, io.env)
      // Listen for the stop signal before announcing readiness, so an early SIGTERM stops cleanly.
      const stopping = waitForSignal()
      const node = await startRelay({ ...flags, dataDir })
      const addresses = node.multiaddrs().map(String)
      if (flags.json) printJson(io, { event: 'started', nodeId: node.nodeId, addresses, dataDir })
      else {
        io.stdout.write('Meshnet relay running (Ctrl+C to stop)\n')
        printFields(io, [
          ['Node ID', node.nodeId],
          ['Data dir', dataDir],
        ])
        io.stdout.write('Give one of these to agents as --bootstrap and --relay:\n')
        for (const address of addresses) io.stdout.write(`  ${address}\n`)
      }
      await stopping
      await node.stop()
      if (!flags.json) io.stdout.write('Relay stopped\n')
    })
}

/** Runs `mesh-relay`; resolves to the exit code. */
export async function main(argv: string[], io: CliIo = processIo): Promise<number> {
  try {
    await createProgram(io).parseAsync(argv, { from: 'user' })
    return 0
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode === 0 ? 0 : 2
    return reportError(io, err, { json: argv.includes('--json'), verbose: argv.includes('--verbose') })
  }
}
