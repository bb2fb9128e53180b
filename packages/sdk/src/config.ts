import type { Connection, PeerDiscovery, PeerId, Stream } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import { isLoopback } from '@libp2p/utils'
import { type Logger, loggerSchema } from '@meshnet/core'
import { nodeIdentitySchema } from '@meshnet/identity'
import { multiaddr } from '@multiformats/multiaddr'
import { type ZodType, z } from 'zod'
import { SDKConfigError } from './errors.ts'

/** Subsystems that `p2pConfig.debug.subsystems` can pick (libp2p components are sorted into them). */
export const DEBUG_SUBSYSTEMS = [
  'connection',
  'transport',
  'discovery',
  'dht',
  'nat',
  'identify',
  'ping',
  'libp2p',
] as const
export type DebugSubsystem = (typeof DEBUG_SUBSYSTEMS)[number]

/** Levels of `p2p:debug` events, most severe first. */
export const DEBUG_LEVELS = ['error', 'info', 'debug', 'trace'] as const
export type DebugLevel = (typeof DEBUG_LEVELS)[number]

/** Protocol id prefixes the SDK's own node serves or that belong to libp2p and Meshnet. */
const RESERVED_PROTOCOL_PREFIXES = ['/ipfs/', '/libp2p/', '/perf/', '/meshnet/']

/** A handler for a custom protocol: libp2p's stream handler (js-libp2p 3: stream first). */
export type ProtocolHandler = (stream: Stream, connection: Connection) => void | Promise<void>

/** `security.authenticate`: resolve true to keep the peer, false (or throw) to refuse it. */
export type AuthenticateHook = (peerId: PeerId, connection: Connection) => boolean | Promise<boolean>

/** A libp2p peer-discovery module factory, e.g. `bootstrap({ list })` from `@libp2p/bootstrap`. */
export type PeerDiscoveryFactory = (components: never) => PeerDiscovery

/** mDNS defaults of Meshnet agents (@meshnet/discovery): our own service name, libp2p's interval. */
const DEFAULT_MDNS_SERVICE_TAG = '_meshnet._udp.local'
const DEFAULT_MDNS_INTERVAL_MS = 10_000
const MDNS_SERVICE_NAME = /^_[a-z0-9-]{1,40}\._(udp|tcp)\.local$/

/**
 * `mdnsOptions.serviceTag` as mDNS needs it: a DNS-SD service name is kept (`_meshnet._udp.local`);
 * a bare name (the guide's `fabstir`, or `_fabstir`) becomes `_fabstir._udp.local`, lower-cased.
 */
export function mdnsServiceName(tag: string): string | undefined {
  if (MDNS_SERVICE_NAME.test(tag)) return tag
  const bare = /^_?([A-Za-z0-9-]{1,40})$/.exec(tag)?.[1]
  return bare === undefined ? undefined : `_${bare.toLowerCase()}._udp.local`
}

const fn = <T>(what: string) =>
  z.custom<T>((value) => typeof value === 'function', { message: `must be ${what}` })

const multiaddrString = z.string().superRefine((value, ctx) => {
  try {
    multiaddr(value)
  } catch (err) {
    ctx.addIssue({
      code: 'custom',
      message: `${JSON.stringify(value)} is not a multiaddr (${(err as Error).message})`,
    })
  }
})

const peerMultiaddrString = multiaddrString.superRefine((value, ctx) => {
  const last = value.split('/p2p/').at(-1)
  const ok = value.includes('/p2p/') && last !== undefined && !last.includes('/') && isPeerId(last)
  if (!ok) ctx.addIssue({ code: 'custom', message: `${value} must end in /p2p/<node id>` })
})

const nodeIdString = z.string().superRefine((value, ctx) => {
  if (!isPeerId(value))
    ctx.addIssue({ code: 'custom', message: `${JSON.stringify(value)} is not a node id (12D3KooW...)` })
})

const int = (min: number, max: number) => z.int().min(min).max(max)
const ms = (min: number, max: number, fallback: number) => int(min, max).default(fallback)

const ENCRYPTION_REASON =
  'cannot be false: every Meshnet connection is encrypted and authenticated with noise, the noise ' +
  "handshake is what proves a peer's node id (which the allowlist, blocklist and pool certificates rely on), " +
  'and agents refuse unencrypted connections, so an SDK without encryption could reach no one'

const WEBRTC_REASON =
  'cannot be enabled: Meshnet agents listen on TCP and WebSocket only, so there is no WebRTC peer to dial, and ' +
  'in Node @libp2p/webrtc needs the native node-datachannel module; use websocket for proxied networks'

const TCP_REASON =
  'cannot be disabled: TCP is the transport every Meshnet agent listens on (WebSocket is the optional second one)'

const DISCOVERY_FACTORY_HINT =
  'a libp2p peer-discovery factory such as bootstrap({ list }) from @libp2p/bootstrap, or ' +
  '{ tag, enabled, options: { endpoint, interval } } for an HTTP endpoint that lists peers'

/** The guide's `{ tag, enabled, options: { endpoint, interval } }`: peers from an HTTP endpoint. */
const endpointDiscoverySchema = z.strictObject({
  tag: z.string().regex(/^[\w.-]{1,64}$/, 'must be 1 to 64 letters, digits, ".", "-" or "_"'),
  /** false keeps the entry in the configuration without asking the endpoint. */
  enabled: z.boolean().default(true),
  options: z.strictObject({
    endpoint: z.string().refine((value) => URL.canParse(value) && /^https?:$/.test(new URL(value).protocol), {
      message: 'must be an http: or https: URL that answers GET with a JSON list of peer multiaddrs',
    }),
    /** ms between requests; the first goes out when the SDK connects. */
    interval: ms(1_000, 86_400_000, 30_000),
    /** Budget of one request. */
    timeout: ms(100, 600_000, 10_000),
  }),
})
export type EndpointDiscovery = z.output<typeof endpointDiscoverySchema>

/** What a `p2pConfig.peerDiscovery` entry is written as. */
export type PeerDiscoveryEntry = PeerDiscoveryFactory | z.input<typeof endpointDiscoverySchema>

// z.custom gives the entry its input type; the transform does the checking (and names the fields).
const peerDiscoveryEntry = z
  .custom<PeerDiscoveryEntry>(() => true)
  .transform((entry: unknown, ctx): PeerDiscoveryFactory | EndpointDiscovery => {
    if (typeof entry === 'function') return entry as PeerDiscoveryFactory
    if (typeof entry !== 'object' || entry === null || Array.isArray(entry)) {
      ctx.addIssue({ code: 'custom', message: `must be ${DISCOVERY_FACTORY_HINT}` })
      return z.NEVER
    }
    const parsed = endpointDiscoverySchema.safeParse(entry)
    if (parsed.success) return parsed.data
    for (const issue of parsed.error.issues) ctx.addIssue({ ...issue, path: issue.path } as never)
    return z.NEVER
  })

const transportSchema = (enabledByDefault: boolean) =>
  z
    .strictObject({
      enabled: z.boolean().default(enabledByDefault),
      /** Open connections over this transport; the newest one over the cap is closed. */
      maxConnections: int(1, 100_000).optional(),
    })
    .prefault({})

const p2pConfigSchema = z
  .strictObject({
    bootstrapNodes: z.array(peerMultiaddrString).max(64).default([]),
    /** Meshnet: keep every packet on 127.0.0.1 (tests, demos); mDNS and AutoNAT off. */
    localOnly: z.boolean().default(false),
    enableDHT: z.boolean().default(true),
    enableMDNS: z.boolean().optional(),
    listenAddresses: z.array(multiaddrString).max(32).optional(),
    dialTimeout: ms(100, 600_000, 30_000),
    requestTimeout: ms(100, 3_600_000, 60_000),
    maxRetries: int(0, 20).default(3),
    retryDelay: ms(0, 600_000, 1_000),
    dhtOptions: z
      .strictObject({
        clientMode: z.boolean().default(true),
        kBucketSize: int(1, 1_000).default(20),
        refreshInterval: ms(10_000, 86_400_000, 900_000),
      })
      .prefault({}),
    mdnsOptions: z
      .strictObject({
        interval: ms(1_000, 3_600_000, DEFAULT_MDNS_INTERVAL_MS),
        serviceTag: z
          .string()
          .transform((tag, ctx) => {
            const name = mdnsServiceName(tag)
            if (name !== undefined) return name
            ctx.addIssue({
              code: 'custom',
              message:
                'must be a name like "fabstir" (used as _fabstir._udp.local) or a service name like ' +
                '_name._udp.local (Meshnet agents answer _meshnet._udp.local)',
            })
            return z.NEVER
          })
          .default(DEFAULT_MDNS_SERVICE_TAG),
      })
      .prefault({}),
    peerDiscovery: z.array(peerDiscoveryEntry).max(16).default([]),
    connectionManager: z
      .strictObject({
        maxConnections: int(1, 100_000).default(100),
        minConnections: int(0, 1_000).default(1),
        maxData: int(1, Number.MAX_SAFE_INTEGER).optional(),
        maxSentData: int(1, Number.MAX_SAFE_INTEGER).optional(),
        maxReceivedData: int(1, Number.MAX_SAFE_INTEGER).optional(),
        autoDial: z.boolean().default(true),
        autoDialInterval: ms(1_000, 3_600_000, 10_000),
        /** While the event loop is held longer than this, new inbound connections are refused. */
        maxEventLoopDelay: int(1, 600_000).optional(),
        /** How often the event-loop delay is read against maxEventLoopDelay. */
        pollInterval: ms(100, 3_600_000, 2_000),
      })
      .prefault({}),
    transports: z
      .strictObject({
        tcp: transportSchema(true).refine((tcp) => tcp.enabled, { message: TCP_REASON, path: ['enabled'] }),
        websocket: transportSchema(true),
        webrtc: z
          .strictObject({
            enabled: z
              .boolean()
              .default(false)
              .refine((enabled) => !enabled, WEBRTC_REASON),
          })
          .prefault({}),
      })
      .prefault({}),
    protocols: z
      .array(
        z.strictObject({
          id: z
            .string()
            .regex(/^\/[\x21-\x7e]{1,255}$/, 'must be a protocol id like /myapp/chat/1.0.0')
            .refine(
              (id) => !RESERVED_PROTOCOL_PREFIXES.some((prefix) => id.startsWith(prefix)),
              `is reserved: ids under ${RESERVED_PROTOCOL_PREFIXES.join(', ')} belong to libp2p and Meshnet; use your own prefix`,
            ),
          handler: fn<ProtocolHandler>('a function (stream, connection) => void'),
          maxInboundStreams: int(1, 1_024).default(32),
          runOnLimitedConnection: z.boolean().default(false),
        }),
      )
      .max(64)
      .default([]),
    metrics: z
      .strictObject({
        enabled: z.boolean().default(true),
        /** Window of the bytes-per-second rates in getP2PMetrics(). */
        movingAverageInterval: ms(1_000, 3_600_000, 60_000),
        // libp2p 0.x's stats engine queued updates and kept stats of disconnected peers; the SDK
        // counts each byte as it passes and keeps no per-peer stats after a connection closes, so
        // these bounds always hold (queue 0, wait 0 ms, 0 old peers). See docs/p2p-configuration.md.
        computeThrottleMaxQueueSize: int(0, 1_000_000).optional(),
        computeThrottleTimeout: int(0, 3_600_000).optional(),
        maxOldPeersRetention: int(0, 1_000_000).optional(),
      })
      .prefault({}),
    security: z
      .strictObject({
        allowlist: z.array(nodeIdString).max(10_000).optional(),
        blocklist: z.array(nodeIdString).max(10_000).default([]),
        enableEncryption: z
          .boolean()
          .default(true)
          .refine((on) => on, ENCRYPTION_REASON),
        authenticate: fn<AuthenticateHook>(
          'a function (peerId, connection) => boolean | Promise<boolean>',
        ).optional(),
      })
      .prefault({}),
    debug: z
      .strictObject({
        enabled: z.boolean().default(false),
        verbose: z.boolean().default(false),
        logLevel: z.enum(DEBUG_LEVELS).optional(),
        subsystems: z
          .array(z.enum(DEBUG_SUBSYSTEMS))
          .min(1)
          .default([...DEBUG_SUBSYSTEMS]),
      })
      .prefault({})
      // verbose alone means trace; an explicit logLevel wins, and verbose then adds detail only.
      .transform((debug) => ({ ...debug, logLevel: debug.logLevel ?? (debug.verbose ? 'trace' : 'debug') })),
    keepAlive: z
      .strictObject({
        enabled: z.boolean().default(true),
        interval: ms(1_000, 3_600_000, 30_000),
        timeout: ms(100, 600_000, 10_000),
      })
      .prefault({}),
    discoveryOptions: z
      .strictObject({
        /** Background rediscovery of the models asked for so far; also how long results are cached. 0 = off. */
        interval: ms(0, 86_400_000, 30_000),
        timeout: ms(100, 600_000, 10_000),
        maxPeers: int(1, 10_000).default(50),
        forceRefresh: z.boolean().default(false),
      })
      .prefault({}),
  })
  .superRefine((config, ctx) => {
    const { localOnly, keepAlive } = config
    if (localOnly && config.enableMDNS === true) {
      ctx.addIssue({
        code: 'custom',
        path: ['enableMDNS'],
        message: 'cannot be true with localOnly (mDNS multicasts on the LAN)',
      })
    }
    if (localOnly) {
      const fields = [
        ['bootstrapNodes', config.bootstrapNodes],
        ['listenAddresses', config.listenAddresses ?? []],
      ] as const
      for (const [field, addrs] of fields) {
        addrs.forEach((addr, index) => {
          if (!isLoopback(multiaddr(addr))) {
            ctx.addIssue({
              code: 'custom',
              path: [field, index],
              message: `${addr} is not a loopback address, and localOnly allows only 127.0.0.1 / ::1`,
            })
          }
        })
      }
      config.peerDiscovery.forEach((entry, index) => {
        if (typeof entry === 'function' || isLoopbackHost(new URL(entry.options.endpoint).hostname)) return
        ctx.addIssue({
          code: 'custom',
          path: ['peerDiscovery', index, 'options', 'endpoint'],
          message: `${entry.options.endpoint} is not on this machine, and localOnly allows only 127.0.0.1 / ::1 / localhost`,
        })
      })
    }
    if (!config.transports.websocket.enabled) {
      const index = (config.listenAddresses ?? []).findIndex((addr) => /\/wss?(\/|$)/.test(addr))
      if (index >= 0) {
        ctx.addIssue({
          code: 'custom',
          path: ['listenAddresses', index],
          message: 'is a WebSocket address but transports.websocket.enabled is false',
        })
      }
    }
    if (keepAlive.timeout >= keepAlive.interval) {
      ctx.addIssue({
        code: 'custom',
        path: ['keepAlive', 'timeout'],
        message: `must be shorter than keepAlive.interval (${keepAlive.interval} ms)`,
      })
    }
    const { minConnections, maxConnections } = config.connectionManager
    if (minConnections > maxConnections) {
      ctx.addIssue({
        code: 'custom',
        path: ['connectionManager', 'minConnections'],
        message: `must not exceed connectionManager.maxConnections (${maxConnections})`,
      })
    }
  })

const sdkConfigSchema = z
  .strictObject({
    mode: z.enum(['production', 'development']),
    p2pConfig: p2pConfigSchema.prefault({}),
    /** A data dir of the SDK's own: identity.key, a joined pool's certificate, the peer store. */
    dataDir: z.string().min(1).optional(),
    identity: nodeIdentitySchema.optional(),
    /** The pool whose members serve jobs (default: the only pool in dataDir). */
    poolId: z.string().min(1).max(128).optional(),
    /** SDK-level `p2p:debug` events (what the SDK does), independent of p2pConfig.debug. */
    debug: z.boolean().default(false),
    logger: (loggerSchema as ZodType<Logger>).optional(),
  })
  .superRefine((config, ctx) => {
    if (config.poolId !== undefined && config.dataDir === undefined) {
      ctx.addIssue({
        code: 'custom',
        path: ['dataDir'],
        message: 'is required with poolId: the pool certificate is read from it',
      })
    }
    if (config.mode !== 'production') return
    if (config.p2pConfig.bootstrapNodes.length === 0) {
      ctx.addIssue({
        code: 'custom',
        path: ['p2pConfig', 'bootstrapNodes'],
        message:
          'production mode needs at least one bootstrap node, a multiaddr ending in /p2p/<node id> ' +
          '(use mode "development" to rely on mDNS or localOnly)',
      })
    }
    if (config.p2pConfig.localOnly) {
      ctx.addIssue({
        code: 'custom',
        path: ['p2pConfig', 'localOnly'],
        message: 'is for tests and demos; use mode "development" with it',
      })
    }
  })

/** What `new FabstirSDK(config)` takes. See docs/p2p-configuration.md. */
export type FabstirSDKConfig = z.input<typeof sdkConfigSchema>
/** The validated configuration, defaults filled in. */
export type ResolvedSDKConfig = z.output<typeof sdkConfigSchema>
export type P2PConfig = z.input<typeof p2pConfigSchema>
export type ResolvedP2PConfig = z.output<typeof p2pConfigSchema>

/** Validates an SDK configuration and fills in defaults; throws SDKConfigError naming the field. */
export function parseSDKConfig(input: unknown): ResolvedSDKConfig {
  return parseWith(sdkConfigSchema, input)
}

function parseWith<T extends ZodType>(schema: T, input: unknown): z.output<T> {
  const result = schema.safeParse(input)
  if (result.success) return result.data
  const issue = result.error.issues[0]!
  if (issue.code === 'unrecognized_keys') {
    throw new SDKConfigError(formatPath([...issue.path, issue.keys[0] ?? '']), 'is not an option (misspelt?)')
  }
  throw new SDKConfigError(formatPath(issue.path), describeIssue(issue), {
    details: { issues: result.error.issues.length },
  })
}

function describeIssue(issue: z.core.$ZodIssue): string {
  switch (issue.code) {
    case 'invalid_type':
      return `must be ${issue.expected === 'int' ? 'a whole number' : `${/^[aeiou]/.test(issue.expected) ? 'an' : 'a'} ${issue.expected}`}`
    case 'too_small':
      return issue.origin === 'array'
        ? `must have at least ${issue.minimum} entr${issue.minimum === 1 ? 'y' : 'ies'}`
        : issue.origin === 'string'
          ? `must not be empty`
          : `must be at least ${issue.minimum}`
    case 'too_big':
      return issue.origin === 'array'
        ? `must have at most ${issue.maximum} entries`
        : issue.origin === 'string'
          ? `must be at most ${issue.maximum} characters`
          : `must be at most ${issue.maximum}`
    case 'invalid_value':
      return `must be one of ${issue.values.map((value) => JSON.stringify(value)).join(', ')}`
    default:
      return issue.message
  }
}

function formatPath(path: readonly PropertyKey[]): string {
  if (path.length === 0) return 'config'
  return path
    .map((part, index) =>
      typeof part === 'number' ? `[${part}]` : `${index === 0 ? '' : '.'}${String(part)}`,
    )
    .join('')
}

function isLoopbackHost(host: string): boolean {
  return host === 'localhost' || host === '[::1]' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host)
}

function isPeerId(value: string): boolean {
  try {
    peerIdFromString(value)
    return true
  } catch {
    return false
  }
}
