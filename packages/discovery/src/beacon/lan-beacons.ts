import { createHash, randomBytes } from 'node:crypto'
import dgram from 'node:dgram'
import { InvalidArgumentError, type Logger, parseWith, silentLogger } from '@meshnet/core'
import type { NodeIdentity } from '@meshnet/identity'
import { z } from 'zod'
import { BEACON_NONCE_BYTES, decodeBeacon, encodeBeacon, MAX_BEACON_BYTES } from './envelope.ts'
import { BEACON_DROP_REASONS, BeaconDropError, type BeaconDropReason, BeaconSocketError } from './errors.ts'
import { ExpiringSet } from './expiring-set.ts'

/** Default multicast group: organisation-local scope (RFC 2365), not routed off the site. */
export const DEFAULT_BEACON_GROUP = '239.192.0.1'
export const DEFAULT_BEACON_PORT = 42424
export const DEFAULT_BEACON_INTERVAL_MS = 5_000
/** Multicast TTL 1 keeps beacons on the local subnet. */
export const DEFAULT_BEACON_TTL = 1
export const DEFAULT_FRESHNESS_MS = 60_000
export const DEFAULT_CLOCK_SKEW_MS = 10_000
export const DEFAULT_REPLAY_CACHE_SIZE = 8_192

const LOOPBACK = '127.0.0.1'
/** One debug line per drop reason per this many ms, with the count of the ones not logged. */
const DROP_LOG_INTERVAL_MS = 10_000

export interface LanBeaconsInit {
  /** Signs everything we send; its node id is who we are on the LAN. */
  identity: NodeIdentity
  /** IPv4 multicast group. Default 239.192.0.1. */
  group?: string
  /** UDP port. Default 42424. */
  port?: number
  /**
   * IPv4 address of the interface to join the group on and send from. Default: the OS's choice
   * (the interface of the default route).
   */
  interface?: string
  /**
   * Stay on this machine: join and send on 127.0.0.1 with TTL 0. For tests and for several agents
   * on one computer. Conflicts with `interface` (other than 127.0.0.1) and with `ttl` > 0.
   */
  localOnly?: boolean
  /** Multicast TTL. Default 1 (this subnet), 0 with `localOnly`. */
  ttl?: number
  /** Body of each `presence` beacon; return undefined to skip one. Omit to send no presence. */
  presence?: () => unknown
  /** Mean presence interval (each one is jittered by ±10%). Default 5000 ms. */
  intervalMs?: number
  /** Largest datagram sent or accepted. Default 2048; every node on the LAN should agree. */
  maxMessageBytes?: number
  /** How old a beacon may be, beyond the clock skew. Default 60 000 ms. */
  freshnessMs?: number
  /** How far the clocks of two nodes may disagree. Default 10 000 ms. */
  clockSkewMs?: number
  /** Sender + nonce pairs remembered to refuse replays. Default 8192. */
  replayCacheSize?: number
  logger?: Logger
  /** Clock in ms since the Unix epoch. Default Date.now. */
  now?: () => number
}

/** A beacon that passed every check. */
export interface BeaconMessage {
  type: string
  from: { nodeId: string; publicKey: Uint8Array }
  /** Our node id when the sender addressed it to us alone; absent when it was for everyone. */
  to?: string
  /** Decoded CBOR body: untrusted data of the sender's choosing; validate it before use. */
  body: unknown
  /** Sender's clock, ms since the Unix epoch. */
  timestamp: number
  /** Source address and port of the datagram. */
  address: string
  port: number
}

/** Receives accepted beacons. Whatever it throws or rejects with is logged and counted, never raised. */
export type BeaconHandler = (message: BeaconMessage) => void | Promise<void>

export interface SendBeaconOptions {
  /** Node id of the only node that should act on it (others drop it; it is not secret). */
  to?: string
}

export interface LanBeaconsStats {
  /** Datagrams sent. */
  sent: number
  /** Datagrams received from others (our own looped-back ones are not counted here). */
  received: number
  /** Received and delivered to the handlers. `received = accepted + sum(dropped)`. */
  accepted: number
  /** Our own datagrams, looped back by multicast and ignored. */
  own: number
  dropped: Record<BeaconDropReason, number>
  /** Handler calls that threw or rejected. */
  handlerErrors: number
  /** Sends that failed at the socket (presence included). */
  sendErrors: number
}

/** LAN beacons: signed datagrams over UDP multicast. Construction does no I/O; start() and stop() do. */
export interface LanBeacons {
  readonly nodeId: string
  /** Group, port, interface (undefined: the OS's choice) and TTL in use. */
  readonly endpoint: { group: string; port: number; interface: string | undefined; ttl: number }
  /** Binds the socket, joins the group and starts presence. Throws BeaconSocketError. */
  start(): Promise<void>
  /** Leaves the group, closes the socket, stops the timer. Safe to call twice. */
  stop(): Promise<void>
  isStarted(): boolean
  /**
   * Signs and multicasts one beacon. Throws InvalidArgumentError (type, recipient or body),
   * BeaconTooLargeError, or BeaconSocketError (not started, or the socket refused it).
   */
  send(type: string, body: unknown, options?: SendBeaconOptions): Promise<void>
  /**
   * Sends the presence beacon now and restarts its interval: for when what it carries changed (the
   * node started listening, joined a pool), so that others need not wait a whole interval to hear
   * it. Does nothing before start() or without a presence callback.
   */
  announce(): void
  /** When the last presence beacon was sent, ms since the epoch (0 before the first). */
  readonly lastPresenceAt: number
  /** Adds a handler for accepted beacons; returns a function that removes it. */
  onMessage(handler: BeaconHandler): () => void
  stats(): LanBeaconsStats
}

const recipientSchema = z.string().min(1).max(128)
const ipv4 = z.ipv4()
const initSchema = z
  .strictObject({
    identity: z.custom<NodeIdentity>(
      (v) => typeof v === 'object' && v !== null && typeof (v as NodeIdentity).sign === 'function',
      'must be a NodeIdentity',
    ),
    group: ipv4
      .refine((a) => {
        const first = Number(a.split('.')[0])
        return first >= 224 && first <= 239
      }, 'must be an IPv4 multicast address (224.0.0.0/4)')
      .default(DEFAULT_BEACON_GROUP),
    port: z.number().int().min(1).max(65_535).default(DEFAULT_BEACON_PORT),
    interface: ipv4.optional(),
    localOnly: z.boolean().default(false),
    ttl: z.number().int().min(0).max(255).optional(),
    presence: z.custom<() => unknown>((v) => typeof v === 'function', 'must be a function').optional(),
    intervalMs: z.number().int().min(10).default(DEFAULT_BEACON_INTERVAL_MS),
    maxMessageBytes: z.number().int().min(256).max(65_507).default(MAX_BEACON_BYTES),
    freshnessMs: z.number().int().min(1).default(DEFAULT_FRESHNESS_MS),
    clockSkewMs: z.number().int().min(0).default(DEFAULT_CLOCK_SKEW_MS),
    replayCacheSize: z.number().int().min(16).default(DEFAULT_REPLAY_CACHE_SIZE),
    logger: z.custom<Logger>((v) => typeof v === 'object' && v !== null).optional(),
    now: z.custom<() => number>((v) => typeof v === 'function', 'must be a function').optional(),
  })
  .refine((i) => !i.localOnly || i.interface === undefined || i.interface === LOOPBACK, {
    message: `localOnly joins on ${LOOPBACK}; leave interface unset`,
    path: ['interface'],
  })
  .refine((i) => !i.localOnly || i.ttl === undefined || i.ttl === 0, {
    message: 'localOnly sends with TTL 0; leave ttl unset',
    path: ['ttl'],
  })
type Config = z.output<typeof initSchema>

const noDrops = (): Record<BeaconDropReason, number> =>
  Object.fromEntries(BEACON_DROP_REASONS.map((reason) => [reason, 0])) as Record<BeaconDropReason, number>

/** The Startable behind {@link lanBeacons}. */
class LanBeaconsService implements LanBeacons {
  readonly nodeId: string
  readonly endpoint: LanBeacons['endpoint']
  readonly #config: Config
  readonly #identity: NodeIdentity
  readonly #logger: Logger
  readonly #now: () => number
  readonly #handlers = new Set<BeaconHandler>()
  /** Sender + nonce of beacons accepted within the freshness window. */
  readonly #seen: ExpiringSet
  /** Hashes of datagrams we sent, so that their multicast loopback copies are ignored. */
  readonly #mine: ExpiringSet
  readonly #stats: LanBeaconsStats = {
    sent: 0,
    received: 0,
    accepted: 0,
    own: 0,
    dropped: noDrops(),
    handlerErrors: 0,
    sendErrors: 0,
  }
  readonly #dropLog = new Map<BeaconDropReason, { at: number; suppressed: number }>()
  #socket: dgram.Socket | undefined
  #starting: Promise<void> | undefined
  #timer: NodeJS.Timeout | undefined

  constructor(config: Config) {
    this.#config = config
    this.#identity = config.identity
    this.nodeId = config.identity.nodeId
    this.#logger = config.logger ?? silentLogger()
    this.#now = config.now ?? Date.now
    this.#seen = new ExpiringSet(config.replayCacheSize)
    this.#mine = new ExpiringSet(config.replayCacheSize)
    this.endpoint = {
      group: config.group,
      port: config.port,
      interface: config.localOnly ? LOOPBACK : config.interface,
      ttl: config.localOnly ? 0 : (config.ttl ?? DEFAULT_BEACON_TTL),
    }
  }

  isStarted(): boolean {
    return this.#socket !== undefined
  }

  async start(): Promise<void> {
    if (this.#socket !== undefined) return
    this.#starting ??= this.#open().finally(() => {
      this.#starting = undefined
    })
    return this.#starting
  }

  async #open(): Promise<void> {
    const { group, port, interface: iface, ttl } = this.endpoint
    const socket = dgram.createSocket({ type: 'udp4', reuseAddr: true })
    socket.on('error', (err) =>
      this.#logger.warn({ err: err.message, group, port }, 'LAN beacon socket error'),
    )
    try {
      // Bound to the group (not 0.0.0.0) so that only datagrams sent to it arrive; Windows cannot
      // bind a multicast address and takes the wildcard instead.
      await bind(socket, port, process.platform === 'win32' ? '0.0.0.0' : group)
      socket.addMembership(group, iface)
      if (iface !== undefined) socket.setMulticastInterface(iface)
      socket.setMulticastTTL(ttl)
      socket.setMulticastLoopback(true)
    } catch (err) {
      await new Promise<void>((resolve) => socket.close(() => resolve()))
      throw new BeaconSocketError(
        `cannot open LAN beacons on ${group}:${port}${iface === undefined ? '' : ` via ${iface}`}: ${(err as Error).message}`,
        {
          cause: err,
          details: { group, port, interface: iface },
          hint: 'check that the interface address exists and has multicast, or use --local-only',
        },
      )
    }
    socket.on('message', (data, rinfo) => this.#receive(data, rinfo))
    this.#socket = socket
    this.#logger.debug({ group, port, interface: iface ?? 'default', ttl }, 'LAN beacons started')
    if (this.#config.presence !== undefined) this.#presence()
  }

  async stop(): Promise<void> {
    await this.#starting?.catch(() => {})
    clearTimeout(this.#timer)
    this.#timer = undefined
    const socket = this.#socket
    if (socket === undefined) return
    this.#socket = undefined
    socket.removeAllListeners('message')
    await new Promise<void>((resolve) => socket.close(() => resolve()))
    // The replay cache outlives a restart: a beacon accepted before stop() stays refused.
    this.#logger.debug({ group: this.endpoint.group, port: this.endpoint.port }, 'LAN beacons stopped')
  }

  async send(type: string, body: unknown, options: SendBeaconOptions = {}): Promise<void> {
    const socket = this.#socket
    if (socket === undefined) {
      throw new BeaconSocketError(`cannot send a '${type}' beacon: LAN beacons are not started`, {
        hint: 'call start() first',
      })
    }
    if (options.to !== undefined && !recipientSchema.safeParse(options.to).success) {
      throw new InvalidArgumentError('beacon recipient must be a node id (1 to 128 characters)')
    }
    const now = Math.floor(this.#now())
    const datagram = encodeBeacon(this.#identity, {
      type,
      body,
      ...(options.to === undefined ? {} : { to: options.to }),
      timestamp: now,
      nonce: randomBytes(BEACON_NONCE_BYTES),
      maxBytes: this.#config.maxMessageBytes,
    })
    this.#mine.add(digest(datagram), now + this.#window(), now)
    const { group, port } = this.endpoint
    try {
      await new Promise<void>((resolve, reject) =>
        socket.send(datagram, port, group, (err) => (err ? reject(err) : resolve())),
      )
    } catch (err) {
      this.#stats.sendErrors++
      throw new BeaconSocketError(
        `cannot send a '${type}' beacon to ${group}:${port}: ${(err as Error).message}`,
        {
          cause: err,
        },
      )
    }
    this.#stats.sent++
  }

  onMessage(handler: BeaconHandler): () => void {
    // Wrapped so that adding the same function twice gives two subscriptions.
    const entry: BeaconHandler = (message) => handler(message)
    this.#handlers.add(entry)
    return () => {
      this.#handlers.delete(entry)
    }
  }

  stats(): LanBeaconsStats {
    return structuredClone(this.#stats)
  }

  /** Beacons older than this (or replays of them) are refused: freshness plus clock skew. */
  #window(): number {
    return this.#config.freshnessMs + this.#config.clockSkewMs
  }

  /** Socket 'message' listener: nothing from the network may throw out of here. */
  #receive(data: Buffer, rinfo: dgram.RemoteInfo): void {
    try {
      this.#accept(data, rinfo)
    } catch (err) {
      // A bug of ours, not the sender's: keep serving.
      this.#logger.error({ err: (err as Error).message }, 'LAN beacon receive failed')
    }
  }

  #accept(data: Buffer, rinfo: dgram.RemoteInfo): void {
    const now = this.#now()
    // Our own datagrams come back through multicast loopback: recognise the exact bytes.
    if (data.length <= this.#config.maxMessageBytes && this.#mine.has(digest(data), now)) {
      this.#stats.own++
      return
    }
    this.#stats.received++
    try {
      const beacon = decodeBeacon(data, { maxBytes: this.#config.maxMessageBytes, self: this.nodeId })
      if (now - beacon.timestamp > this.#window()) {
        throw new BeaconDropError('stale', `beacon from ${beacon.nodeId} is ${now - beacon.timestamp} ms old`)
      }
      if (beacon.timestamp - now > this.#config.clockSkewMs) {
        throw new BeaconDropError(
          'future',
          `beacon from ${beacon.nodeId} is ${beacon.timestamp - now} ms ahead`,
        )
      }
      const key = `${beacon.nodeId}/${Buffer.from(beacon.nonce).toString('base64')}`
      // Kept until it would be stale anyway (+1: at exactly `window` ms old it is still fresh).
      if (!this.#seen.add(key, beacon.timestamp + this.#window() + 1, now)) {
        throw new BeaconDropError('replayed', `beacon from ${beacon.nodeId} was seen before`)
      }
      this.#stats.accepted++
      const message: BeaconMessage = {
        type: beacon.type,
        from: { nodeId: beacon.nodeId, publicKey: beacon.publicKey },
        body: beacon.body,
        timestamp: beacon.timestamp,
        address: rinfo.address,
        port: rinfo.port,
      }
      if (beacon.to !== undefined) message.to = beacon.to
      this.#deliver(message)
    } catch (err) {
      if (!(err instanceof BeaconDropError)) throw err
      this.#drop(err, rinfo, data.length, now)
    }
  }

  #deliver(message: BeaconMessage): void {
    for (const handler of [...this.#handlers]) {
      try {
        const result = handler(message)
        if (result instanceof Promise) result.catch((err: unknown) => this.#handlerFailed(message, err))
      } catch (err) {
        this.#handlerFailed(message, err)
      }
    }
  }

  #handlerFailed(message: BeaconMessage, err: unknown): void {
    this.#stats.handlerErrors++
    this.#logger.warn(
      {
        err: err instanceof Error ? err.message : String(err),
        type: message.type,
        from: message.from.nodeId,
      },
      'LAN beacon handler failed',
    )
  }

  #drop(err: BeaconDropError, rinfo: dgram.RemoteInfo, bytes: number, now: number): void {
    this.#stats.dropped[err.reason]++
    // Anyone can make us drop datagrams as fast as they can send them: log a sample only.
    const last = this.#dropLog.get(err.reason)
    if (last !== undefined && now - last.at < DROP_LOG_INTERVAL_MS) {
      last.suppressed++
      return
    }
    this.#dropLog.set(err.reason, { at: now, suppressed: 0 })
    this.#logger.debug(
      {
        reason: err.reason,
        address: rinfo.address,
        port: rinfo.port,
        bytes,
        suppressed: last?.suppressed ?? 0,
      },
      err.shortMessage,
    )
  }

  lastPresenceAt = 0

  announce(): void {
    if (this.#socket === undefined) return
    clearTimeout(this.#timer)
    this.#presence()
  }

  #presence(): void {
    const socket = this.#socket
    if (socket === undefined || this.#config.presence === undefined) return
    let body: unknown
    try {
      body = this.#config.presence()
    } catch (err) {
      this.#logger.warn({ err: (err as Error).message }, 'LAN beacon presence callback failed')
    }
    if (body !== undefined) {
      this.lastPresenceAt = Date.now()
      this.send('presence', body).catch((err: unknown) =>
        this.#logger.warn({ err: (err as Error).message }, 'LAN presence beacon not sent'),
      )
    }
    const jitter = 0.9 + 0.2 * Math.random()
    this.#timer = setTimeout(() => this.#presence(), Math.round(this.#config.intervalMs * jitter))
  }
}

/**
 * LAN beacons: a signed-datagram transport over UDP multicast that the agent layers presence, pool
 * joins, certificate responses and revocation lists on. Validates `init` now (InvalidArgumentError);
 * does no I/O until `start()`.
 */
export function lanBeacons(init: LanBeaconsInit): LanBeacons {
  return new LanBeaconsService(parseWith(initSchema, init, 'LAN beacon option'))
}

function bind(socket: dgram.Socket, port: number, address: string): Promise<void> {
  return new Promise((resolve, reject) => {
    socket.once('error', reject)
    socket.bind({ port, address, exclusive: false }, () => {
      socket.off('error', reject)
      resolve()
    })
  })
}

function digest(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('base64')
}
