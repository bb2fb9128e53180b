import { readFile } from 'node:fs/promises'
import { CorruptFileError, InvalidArgumentError, parseWith } from '@meshnet/core'
import { parse } from 'yaml'
import { z } from 'zod'

/** Multicast group, port and interval of LAN beacons unless configured otherwise. */
export const BEACON_DEFAULTS = { group: '239.192.0.1', port: 42424, intervalMs: 5_000 } as const

const multiaddr = z.string().regex(/^\/[a-z0-9-]+(\/|$)/i, 'a multiaddr such as /ip4/192.168.1.5/tcp/4001')

/**
 * Agent settings: the same fields in `<data-dir>/config.yaml`, in a `--config <file.yaml>`, and as
 * `mesh start` flags (flags win, then --config, then the data dir's file).
 */
export const agentSettingsSchema = z.strictObject({
  /** Addresses to listen on. Default: all interfaces, random TCP port (127.0.0.1 with localOnly). */
  listen: z.array(multiaddr).max(16).optional(),
  /**
   * Peers to connect to first: full multiaddrs ending in /p2p/<id>. `true` (the P2P guide's
   * bootstrap-node config): this node is a bootstrap node for others, so it dials none itself and
   * keeps its DHT in server mode; `false`: no bootstrap peers.
   */
  bootstrap: z.union([z.array(multiaddr).max(64), z.boolean()]).optional(),
  /** Kademlia DHT on (server mode on a LAN). */
  dht: z.boolean().optional(),
  /** mDNS discovery on the LAN. */
  mdns: z.boolean().optional(),
  /** LAN beacons (pool joins and presence over UDP multicast). */
  beacons: z.boolean().optional(),
  /** Ask the router to forward our TCP port (UPnP IGD), so that members elsewhere can dial us. */
  upnp: z.boolean().optional(),
  /** Circuit relays to reserve a slot on; with `listen: ['/p2p-circuit']` the node is reachable only through them. */
  relay: z.array(multiaddr).max(8).optional(),
  /** The model this node serves: a GGUF file, a model id (fetched from pool members) or an http(s) URL. */
  model: z.string().min(1).optional(),
  /** Disk fetched model chunks may take, in MiB (default: the file system's free space). */
  diskMb: z
    .number()
    .int()
    .min(1)
    .max(1024 * 1024 * 1024)
    .optional(),
  /** Keep every packet on this machine (tests, demos). */
  localOnly: z.boolean().optional(),
  /** Sign any LAN join request for pools this node administers. */
  autoApprove: z.boolean().optional(),
  /** Advertise the served model in the DHT and run jobs for anyone (rate-limited per peer). */
  public: z.boolean().optional(),
  /** CPU threads for this node's shards and local engine (default: every core). */
  threads: z.number().int().min(1).max(1024).optional(),
  /** Generations this node's whole-model engine decodes at once, each with its own KV cache (default 4). */
  parallel: z.number().int().min(1).max(64).optional(),
  /** Memory this node offers for model shards and KV caches, in MiB (default: half of RAM). */
  memoryMb: z
    .number()
    .int()
    .min(16)
    .max(16 * 1024 * 1024)
    .optional(),
  /** Public (no pool) jobs one peer may start per minute. */
  publicJobsPerMinute: z.number().int().min(1).max(10_000).optional(),
  /** The OpenAI-compatible HTTP API (off unless a port is given; 0 = a free port). */
  api: z
    .strictObject({
      port: z.number().int().min(0).max(65535).optional(),
      host: z.string().min(1).optional(),
      key: z.string().min(8).max(256).optional(),
      /** Web origins whose pages may call the API from a browser (CORS); `*` for any. None by default. */
      corsOrigins: z
        .array(
          z.union([
            z.literal('*'),
            z
              .url({ protocol: /^https?$/ })
              .regex(/^[a-z]+:\/\/[^/]+\/?$/i, 'an origin: scheme://host[:port], no path'),
          ]),
        )
        .max(64)
        .optional(),
    })
    .optional(),
  /**
   * The dashboard and chat page: served on the API port, and also on this port when given (0 = a
   * free one); without an API port, on this port alone. `false` turns it off.
   */
  dashboard: z
    .union([z.literal(false), z.strictObject({ port: z.number().int().min(0).max(65535).optional() })])
    .optional(),
  /** A mesh-control-plane to register with, join rings through and take jobs from. */
  controlPlane: z
    .strictObject({
      url: z.url().optional(),
      token: z.string().min(1).max(512).optional(),
    })
    .optional(),
  beacon: z
    .strictObject({
      group: z.ipv4().optional(),
      port: z.number().int().min(1).max(65535).optional(),
      interface: z.ipv4().optional(),
      intervalMs: z.number().int().min(100).max(600_000).optional(),
    })
    .optional(),
})
export type AgentSettings = z.infer<typeof agentSettingsSchema>

/** Reads a settings file (YAML); errors name the file and the field. */
export async function readSettingsFile(
  path: string,
  schema: z.ZodType = agentSettingsSchema,
): Promise<AgentSettings> {
  let text: string
  try {
    text = await readFile(path, 'utf8')
  } catch (err) {
    throw new InvalidArgumentError(`cannot read config file ${path}: ${(err as Error).message}`, {
      cause: err,
    })
  }
  let doc: unknown
  try {
    doc = parse(text) ?? {}
  } catch (err) {
    throw new CorruptFileError(`${path} is not valid YAML: ${(err as Error).message}`, { cause: err })
  }
  return parseWith(schema, doc, `${path}:`) as AgentSettings
}

/** Validates merged settings; the error names the field (`listen.0: a multiaddr such as ...`). */
export function parseSettings<T>(schema: z.ZodType<T>, value: unknown): T {
  return parseWith(
    schema,
    value,
    'setting',
    (message, options) =>
      new InvalidArgumentError(message, {
        ...options,
        hint: 'check the flag, --config file or config.yaml that sets it',
      }),
  )
}

/** Later sources win field by field; `beacon`, `api`, `controlPlane` and `dashboard` merge key by key. */
export function mergeSettings(...sources: AgentSettings[]): AgentSettings {
  const out: AgentSettings = {}
  for (const source of sources) {
    for (const [key, value] of Object.entries(source) as Array<[keyof AgentSettings, unknown]>) {
      if (value === undefined) continue
      if (value === false && key === 'dashboard') out.dashboard = false
      else if (key === 'beacon' || key === 'api' || key === 'controlPlane' || key === 'dashboard') {
        const defined = Object.entries(value as object).filter(([, v]) => v !== undefined)
        ;(out as Record<string, unknown>)[key] = { ...out[key], ...Object.fromEntries(defined) }
      } else (out as Record<string, unknown>)[key] = value
    }
  }
  return out
}
