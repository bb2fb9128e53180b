import type { ComponentLogger, PeerDiscovery, PeerId } from '@libp2p/interface'
import { parseWith } from '@meshnet/core'
import { z } from 'zod'
import { HttpPeerDiscoveryService } from './http-discovery-service.ts'

/** How often the endpoint is asked, by default. */
export const DEFAULT_HTTP_DISCOVERY_INTERVAL_MS = 30_000
/** Budget of one request (connect, answer, body), by default. */
export const DEFAULT_HTTP_DISCOVERY_TIMEOUT_MS = 10_000
/** Largest response body read; a bigger one is dropped unread past this point. */
export const MAX_HTTP_DISCOVERY_RESPONSE_BYTES = 256 * 1024
/** Most peers taken from one response; the rest are dropped and counted. */
export const MAX_HTTP_DISCOVERY_PEERS = 1_000

export interface HttpPeerDiscoveryInit {
  /** An http: or https: URL answering GET with a JSON peer list (see docs/p2p-configuration.md). */
  endpoint: string
  /** Milliseconds between the end of one request and the next; the first goes out at start. Default 30 s. */
  intervalMs?: number
  /** Budget of one request. Default 10 s. */
  timeoutMs?: number
  /** Largest body read. Default 256 KiB. */
  maxResponseBytes?: number
  /** Most peers taken from one response. Default 1000. */
  maxPeers?: number
  /** Names this module in logs (`meshnet:http-discovery:<tag>`). */
  tag?: string
}

export interface HttpPeerDiscoveryComponents {
  peerId: PeerId
  logger: ComponentLogger
}

/** Why a response or an entry of it was not used. */
export type HttpDiscoveryDropReason =
  | 'http-status'
  | 'too-large'
  | 'not-json'
  | 'bad-schema'
  | 'timeout'
  | 'network'
  | 'bad-entry'
  | 'bad-multiaddr'
  | 'no-peer-id'
  | 'mismatched-peer-id'
  | 'self'
  | 'over-limit'

export interface HttpPeerDiscoveryStats {
  /** Requests sent, answered or not. */
  requests: number
  /** Responses whose peer list was read (possibly with entries dropped). */
  responses: number
  /** `peer` events emitted. */
  peers: number
  /** Responses and entries dropped, by reason. */
  dropped: Partial<Record<HttpDiscoveryDropReason, number>>
  /** What went wrong with the last failed request, if the last request failed. */
  lastError: string | undefined
}

/** A libp2p peer-discovery module that polls an HTTP endpoint for peer multiaddrs. */
export interface HttpPeerDiscovery extends PeerDiscovery {
  readonly endpoint: string
  stats(): HttpPeerDiscoveryStats
  /** Asks the endpoint now; resolves with the number of peers emitted. Used by start() and the timer. */
  refresh(options?: { signal?: AbortSignal }): Promise<number>
}

/** The checked form of HttpPeerDiscoveryInit (also the `httpDiscovery` entries of createMeshNode). */
export const httpPeerDiscoveryInitSchema = z.strictObject({
  endpoint: z.string().refine((value) => URL.canParse(value) && /^https?:$/.test(new URL(value).protocol), {
    message: 'must be an http: or https: URL',
  }),
  intervalMs: z.int().min(100).max(86_400_000).default(DEFAULT_HTTP_DISCOVERY_INTERVAL_MS),
  timeoutMs: z.int().min(100).max(600_000).default(DEFAULT_HTTP_DISCOVERY_TIMEOUT_MS),
  maxResponseBytes: z
    .int()
    .min(2)
    .max(16 * 1024 * 1024)
    .default(MAX_HTTP_DISCOVERY_RESPONSE_BYTES),
  maxPeers: z.int().min(1).max(100_000).default(MAX_HTTP_DISCOVERY_PEERS),
  tag: z
    .string()
    .regex(/^[\w.-]{1,64}$/, 'must be 1 to 64 letters, digits, ".", "-" or "_"')
    .optional(),
})

export type ResolvedHttpPeerDiscoveryInit = z.output<typeof httpPeerDiscoveryInitSchema>

/**
 * A libp2p peer-discovery module that asks an HTTP endpoint for peers at start and then every
 * `intervalMs`, and emits a `peer` event per peer found (as `@libp2p/bootstrap` and `@libp2p/mdns`
 * do). The response is size-capped and schema-checked; bad entries are dropped and counted in
 * `stats()`. `stop()` aborts a request under way and leaves no timer.
 *
 * The endpoint answers `GET` with JSON: `["/ip4/…/tcp/…/p2p/<id>", …]`, or `{ "peers": [...] }`
 * whose entries are such strings or `{ "id": "<id>", "multiaddrs": ["/ip4/…/tcp/…", …] }`.
 */
export function httpPeerDiscovery(
  init: HttpPeerDiscoveryInit,
): (components: HttpPeerDiscoveryComponents) => HttpPeerDiscovery {
  const resolved = parseWith(httpPeerDiscoveryInitSchema, init, 'invalid httpPeerDiscovery option')
  return (components) => new HttpPeerDiscoveryService(components, resolved)
}
