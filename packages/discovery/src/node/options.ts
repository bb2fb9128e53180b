import { resolve } from 'node:path'
import type { ComponentLogger, Metrics, PeerId, ServiceMap } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import { isLoopback } from '@libp2p/utils'
import { InvalidArgumentError, type Logger, loggerSchema } from '@meshnet/core'
import { nodeIdentitySchema } from '@meshnet/identity'
import { isMeshnetProtocol } from '@meshnet/protocols'
import { type Multiaddr, multiaddr } from '@multiformats/multiaddr'
import type { ServiceFactoryMap } from 'libp2p'
import { z } from 'zod'
import {
  DEFAULT_BOOTSTRAP_DELAY_MS,
  DEFAULT_DHT_ADDRESSES,
  DEFAULT_DHT_MODE,
  DEFAULT_DHT_PROTOCOL,
  DEFAULT_DIAL_TIMEOUT_MS,
  DEFAULT_INBOUND_CONNECTIONS_PER_SECOND,
  DEFAULT_LISTEN,
  DEFAULT_LOCAL_LISTEN,
  DEFAULT_MAINTENANCE_INTERVAL_MS,
  DEFAULT_MAX_CONNECTIONS,
  DEFAULT_MAX_INCOMING_PENDING_CONNECTIONS,
  DEFAULT_MAX_PARALLEL_DIALS,
  DEFAULT_MAX_STREAMS_PER_CONNECTION,
  DEFAULT_MDNS_INTERVAL_MS,
  DEFAULT_MDNS_SERVICE_TAG,
  DEFAULT_PEER_ADDRESS_TTL_MS,
  DEFAULT_RELAY_AUTO_DELAY_MS,
  DEFAULT_RELAY_CONNECTION_DATA_BYTES,
  DEFAULT_RELAY_CONNECTION_DURATION_MS,
  DEFAULT_RELAY_HOP_TIMEOUT_MS,
  DEFAULT_RELAY_MAX_RESERVATIONS,
  DEFAULT_RELAY_RESERVATION_TTL_MS,
  DEFAULT_RELAY_RESERVATIONS,
  DEFAULT_STREAM_READ_BUFFER_BYTES,
  LOCAL_INBOUND_CONNECTIONS_PER_SECOND,
  LOCAL_MAX_INCOMING_PENDING_CONNECTIONS,
} from './defaults.ts'
import { httpPeerDiscoveryInitSchema } from './http-discovery.ts'

/** The swarm key file format shared with go-libp2p and kubo (`swarm.key`). */
const SWARM_KEY = /^\/key\/swarm\/psk\/1\.0\.0\/\r?\n\/base16\/\r?\n[0-9a-fA-F]{64}\s*$/

const multiaddrString = z.string().superRefine((value, ctx) => {
  try {
    multiaddr(value)
  } catch (err) {
    ctx.addIssue({ code: 'custom', message: `not a multiaddr (${(err as Error).message})` })
  }
})

/** A multiaddr that ends in `/p2p/<peer id>`, so that the peer's key is checked on dial. */
const peerMultiaddrString = multiaddrString.superRefine((value, ctx) => {
  if (!value.includes('/p2p/') || lastPeerId(value) === undefined) {
    ctx.addIssue({ code: 'custom', message: `${value} must end in /p2p/<node id>` })
  }
})

/** An IPv4/IPv6 address or network as a multiaddr: `/ip4/10.0.0.5` or `/ip4/10.0.0.0/ipcidr/8`. */
const ipNetString = multiaddrString.superRefine((value, ctx) => {
  if (!/^\/ip[46]\/[^/]+(\/ipcidr\/\d{1,3})?$/.test(value)) {
    ctx.addIssue({
      code: 'custom',
      message: `${value} must be /ip4/<addr> or /ip6/<addr>, optionally /ipcidr/<bits>`,
    })
  }
})

const nodeIdString = z.string().superRefine((value, ctx) => {
  try {
    peerIdFromString(value)
  } catch {
    ctx.addIssue({ code: 'custom', message: `${JSON.stringify(value)} is not a node id (12D3KooW...)` })
  }
})

const ms = (fallback: number) => z.int().min(0).max(2_147_483_647).default(fallback)
const count = (fallback: number) => z.int().min(1).max(1_000_000).default(fallback)

const relayServerLimitsSchema = z
  .strictObject({
    maxReservations: count(DEFAULT_RELAY_MAX_RESERVATIONS),
    reservationTtlMs: ms(DEFAULT_RELAY_RESERVATION_TTL_MS),
    /** 0 turns the limit off: relayed connections last as long as the reservation. */
    connectionDurationMs: ms(DEFAULT_RELAY_CONNECTION_DURATION_MS),
    /** 0 turns the limit off. */
    connectionDataBytes: z.int().min(0).default(DEFAULT_RELAY_CONNECTION_DATA_BYTES),
    hopTimeoutMs: ms(DEFAULT_RELAY_HOP_TIMEOUT_MS),
  })
  .prefault({})

const schema = z.strictObject({
  identity: nodeIdentitySchema,
  dataDir: z.string().min(1).optional(),
  localOnly: z.boolean().default(false),
  listen: z.array(multiaddrString).optional(),
  announce: z.array(multiaddrString).default([]),
  websockets: z.boolean().default(true),
  bootstrap: z.array(peerMultiaddrString).default([]),
  bootstrapDelayMs: ms(DEFAULT_BOOTSTRAP_DELAY_MS),
  mdns: z.boolean().optional(),
  mdnsServiceTag: z
    .string()
    .regex(/^_[a-z0-9-]{1,40}\._(udp|tcp)\.local$/, 'must look like _name._udp.local')
    .default(DEFAULT_MDNS_SERVICE_TAG),
  mdnsIntervalMs: z.int().min(1_000).max(3_600_000).default(DEFAULT_MDNS_INTERVAL_MS),
  /** HTTP endpoints asked for peer multiaddrs (httpPeerDiscovery); found peers are dialed like mDNS ones. */
  httpDiscovery: z.array(httpPeerDiscoveryInitSchema).max(16).default([]),
  dhtMode: z.enum(['server', 'client', 'auto', 'off']).default(DEFAULT_DHT_MODE),
  dhtProtocol: z
    .string()
    .refine(isMeshnetProtocol, 'must be a Meshnet protocol id like /meshnet/kad/1.0.0')
    .default(DEFAULT_DHT_PROTOCOL),
  dhtAddresses: z.enum(['routable', 'public', 'private', 'all']).default(DEFAULT_DHT_ADDRESSES),
  /** Kademlia bucket size (libp2p's default, 20, when unset). */
  dhtKBucketSize: z.int().min(1).max(1_000).optional(),
  relays: z.array(peerMultiaddrString).default([]),
  relayReservations: z.enum(['auto', 'always', 'off']).default(DEFAULT_RELAY_RESERVATIONS),
  relayAutoDelayMs: ms(DEFAULT_RELAY_AUTO_DELAY_MS),
  relayServer: z.boolean().default(false),
  relayServerLimits: relayServerLimitsSchema,
  dcutr: z.boolean().default(true),
  autoNAT: z.boolean().optional(),
  upnp: z.boolean().default(false),
  maxConnections: count(DEFAULT_MAX_CONNECTIONS),
  /** Default 10 (64 with localOnly). */
  maxIncomingPendingConnections: z.int().min(1).max(1_000_000).optional(),
  /** Per remote IP. Default 5 (200 with localOnly, where every peer is 127.0.0.1). */
  inboundConnectionsPerSecond: z.int().min(1).max(1_000_000).optional(),
  maxParallelDials: count(DEFAULT_MAX_PARALLEL_DIALS),
  dialTimeoutMs: z.int().min(100).max(600_000).default(DEFAULT_DIAL_TIMEOUT_MS),
  maxStreamsPerConnection: count(DEFAULT_MAX_STREAMS_PER_CONNECTION),
  streamReadBufferBytes: z
    .int()
    .min(64 * 1024)
    .max(1024 * 1024 * 1024)
    .default(DEFAULT_STREAM_READ_BUFFER_BYTES),
  peerAddressTtlMs: ms(DEFAULT_PEER_ADDRESS_TTL_MS),
  allowPeers: z.array(nodeIdString).optional(),
  denyPeers: z.array(nodeIdString).default([]),
  allowAddresses: z.array(ipNetString).default([]),
  denyAddresses: z.array(ipNetString).default([]),
  preSharedKey: z
    .union([z.string(), z.instanceof(Uint8Array).transform((bytes) => new TextDecoder().decode(bytes))])
    .refine(
      (key) => SWARM_KEY.test(key),
      'must be a swarm key: /key/swarm/psk/1.0.0/ then /base16/ then 64 hex',
    )
    .optional(),
  maintenanceIntervalMs: z.int().min(100).max(3_600_000).default(DEFAULT_MAINTENANCE_INTERVAL_MS),
  logger: loggerSchema.optional(),
  /** A libp2p `Metrics` factory (byte counters per connection and protocol); none by default. */
  metrics: z
    .custom<(components: never) => Metrics>((value) => typeof value === 'function', 'must be a factory')
    .optional(),
  /** Where libp2p's own debug logs go (a libp2p ComponentLogger); libp2p's `debug` logger by default. */
  componentLogger: z
    .custom<ComponentLogger>(
      (value) =>
        typeof value === 'object' &&
        value !== null &&
        typeof (value as ComponentLogger).forComponent === 'function',
      'must be a libp2p ComponentLogger (an object with forComponent(name))',
    )
    .optional(),
  start: z.boolean().default(true),
  services: z
    .record(
      z.string(),
      z.custom<(components: never) => unknown>(
        (value) => typeof value === 'function',
        'must be a service factory',
      ),
    )
    .optional(),
})

/** Options of `createMeshNode`, as a caller writes them. See docs/p2p-configuration.md. */
export type MeshNodeOptions<T extends ServiceMap = ServiceMap> = Omit<z.input<typeof schema>, 'services'> & {
  /** Extra libp2p services (gossipsub, pool protocols); their names must not clash with ours. */
  services?: ServiceFactoryMap<T>
}

type Parsed = z.output<typeof schema>

/** Options after validation and defaults; `localOnly` has been applied. */
export interface ResolvedMeshNodeOptions
  extends Omit<
    Parsed,
    | 'listen'
    | 'mdns'
    | 'autoNAT'
    | 'allowPeers'
    | 'denyPeers'
    | 'bootstrap'
    | 'relays'
    | 'dataDir'
    | 'services'
    | 'logger'
    | 'maxIncomingPendingConnections'
    | 'inboundConnectionsPerSecond'
  > {
  maxIncomingPendingConnections: number
  inboundConnectionsPerSecond: number
  dataDir: string | undefined
  listen: string[]
  mdns: boolean
  autoNAT: boolean
  bootstrap: Multiaddr[]
  relays: Multiaddr[]
  allowPeers: PeerId[] | undefined
  denyPeers: PeerId[]
  logger: Logger | undefined
}

/** Names of the services the mesh node adds itself; extra services must use other names. */
export const RESERVED_SERVICE_NAMES: readonly string[] = [
  'identify',
  'identifyPush',
  'ping',
  'dht',
  'autoNAT',
  'dcutr',
  'upnp',
  'relay',
  'connectivity',
]

/**
 * Validates `createMeshNode` options, fills in defaults and applies `localOnly`. Throws an
 * InvalidArgumentError that names the offending field.
 */
export function resolveMeshNodeOptions(input: unknown): ResolvedMeshNodeOptions {
  const result = schema.safeParse(input)
  if (!result.success) {
    const issue = result.error.issues[0]
    if (issue?.code === 'unrecognized_keys') {
      throw invalid(formatPath([...issue.path, issue.keys[0] ?? '']), 'is not an option (misspelt?)')
    }
    throw invalid(formatPath(issue?.path ?? []), issue?.message ?? 'invalid', {
      issues: result.error.issues.length,
    })
  }
  const options = result.data
  const { localOnly } = options

  for (const name of Object.keys(options.services ?? {})) {
    if (RESERVED_SERVICE_NAMES.includes(name)) {
      throw invalid(`services.${name}`, `the name ${name} is used by the mesh node itself; pick another`)
    }
  }

  const listen = options.listen ?? [...(localOnly ? DEFAULT_LOCAL_LISTEN : DEFAULT_LISTEN)]
  if (!options.websockets) {
    const index = listen.findIndex((addr) => /\/wss?(\/|$)/.test(addr))
    if (index >= 0) throw invalid(`listen[${index}]`, 'is a WebSocket address but websockets is false')
  }

  if (localOnly) {
    if (options.mdns === true)
      throw invalid('mdns', 'cannot be enabled with localOnly (it multicasts on the LAN)')
    if (options.autoNAT === true) {
      throw invalid('autoNAT', 'cannot be enabled with localOnly (it asks other peers to dial us back)')
    }
    if (options.upnp) throw invalid('upnp', 'cannot be enabled with localOnly (it talks to the LAN router)')
    requireLoopback('listen', listen, true)
    requireLoopback('announce', options.announce, false)
    requireLoopback('bootstrap', options.bootstrap, false)
    requireLoopback('relays', options.relays, false)
    options.httpDiscovery.forEach((entry, index) => {
      if (!isLoopbackHost(new URL(entry.endpoint).hostname)) {
        throw invalid(
          `httpDiscovery[${index}].endpoint`,
          `${entry.endpoint} is not on this machine, and localOnly allows only 127.0.0.1 / ::1 / localhost`,
        )
      }
    })
  }
  if (options.relayReservations === 'always' && options.relays.length === 0) {
    throw invalid('relays', 'is empty but relayReservations is "always"; list at least one relay address')
  }
  if (options.relayServer && options.dhtMode === 'client') {
    throw invalid('dhtMode', 'cannot be "client" on a relay server, which answers DHT queries')
  }

  const { services: _services, ...rest } = options
  return {
    ...rest,
    dataDir: options.dataDir === undefined ? undefined : resolve(options.dataDir),
    listen,
    mdns: localOnly ? false : (options.mdns ?? true),
    autoNAT: localOnly ? false : (options.autoNAT ?? true),
    maxIncomingPendingConnections:
      options.maxIncomingPendingConnections ??
      (localOnly ? LOCAL_MAX_INCOMING_PENDING_CONNECTIONS : DEFAULT_MAX_INCOMING_PENDING_CONNECTIONS),
    inboundConnectionsPerSecond:
      options.inboundConnectionsPerSecond ??
      (localOnly ? LOCAL_INBOUND_CONNECTIONS_PER_SECOND : DEFAULT_INBOUND_CONNECTIONS_PER_SECOND),
    dhtMode: options.relayServer && options.dhtMode !== 'off' ? 'server' : options.dhtMode,
    bootstrap: options.bootstrap.map((addr) => multiaddr(addr)),
    relays: options.relays.map((addr) => multiaddr(addr)),
    allowPeers: options.allowPeers?.map((id) => peerIdFromString(id)),
    denyPeers: options.denyPeers.map((id) => peerIdFromString(id)),
    logger: options.logger,
  }
}

/** The last `/p2p/<id>` of a multiaddr string, if any. */
export function lastPeerId(addr: string): string | undefined {
  const components = multiaddr(addr).getComponents()
  return components.findLast((component) => component.name === 'p2p')?.value
}

function isLoopbackHost(host: string): boolean {
  return host === 'localhost' || host === '[::1]' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host)
}

function requireLoopback(field: string, addrs: readonly string[], allowBareCircuit: boolean): void {
  addrs.forEach((addr, index) => {
    if (allowBareCircuit && addr === '/p2p-circuit') return
    if (!isLoopback(multiaddr(addr))) {
      throw invalid(
        `${field}[${index}]`,
        `${addr} is not a loopback address, and localOnly allows only 127.0.0.1 / ::1`,
      )
    }
  })
}

function invalid(
  field: string,
  problem: string,
  details: Record<string, unknown> = {},
): InvalidArgumentError {
  return new InvalidArgumentError(`invalid mesh node option ${field}: ${problem}`, {
    details: { field, ...details },
    hint: 'see docs/p2p-configuration.md for every option and its default',
  })
}

function formatPath(path: readonly PropertyKey[]): string {
  if (path.length === 0) return 'options'
  return path
    .map((part, index) =>
      typeof part === 'number' ? `[${part}]` : `${index === 0 ? '' : '.'}${String(part)}`,
    )
    .join('')
}
