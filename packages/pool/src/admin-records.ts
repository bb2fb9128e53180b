import { z } from 'zod'
import type { Certificate } from './certificate.ts'
import { CLOCK_SKEW_MS, nodeIdSchema, POOL_LIMITS, timestampSchema } from './encoding.ts'
import type { JoinRefusalReason, JoinRequestError } from './errors.ts'
import type { JoinRequest, JoinResponse } from './join.ts'
import type { ReplayCache } from './replay-cache.ts'

/** Lifetime of a join token created without `ttlMs`: 24 hours. */
export const DEFAULT_JOIN_TOKEN_TTL_MS = 24 * 60 * 60_000
/**
 * Join requests kept waiting for approval at once. When the queue is full a new request is turned
 * away (not queued, counted); the requests already waiting stay.
 */
export const MAX_PENDING_JOIN_REQUESTS = 100
/**
 * Join requests from one source (the sender's address) kept waiting at once, so that fresh keys
 * sent from one machine cannot take the queue from other devices.
 */
export const MAX_PENDING_JOIN_REQUESTS_PER_SOURCE = 8
/** Why a join request that would have waited for approval was turned away. */
export const JOIN_QUEUE_DROP_REASONS = ['queue-full', 'source-full'] as const
export type JoinQueueDropReason = (typeof JOIN_QUEUE_DROP_REASONS)[number]
/** Pending and denied requests, and expired tokens, are forgotten after 7 days. */
export const RETENTION_MS = 7 * 24 * 60 * 60_000

export const FILE_VERSION = 1
/** Longest source recorded with a join request (an IPv6 address with a zone fits). */
export const SOURCE_CHARS = 64
const base64 = z.base64()

const tokenRecordSchema = z.strictObject({
  id: z.string(),
  publicKey: base64,
  role: z.enum(['member', 'client']),
  createdAt: timestampSchema,
  expiresAt: timestampSchema,
  singleUse: z.boolean(),
  usedBy: z.array(z.strictObject({ nodeId: nodeIdSchema, at: timestampSchema })),
})
export const tokensFileSchema = z.strictObject({
  version: z.literal(FILE_VERSION),
  tokens: z.array(tokenRecordSchema),
})
export type TokenRecord = z.infer<typeof tokenRecordSchema>

const pendingRecordSchema = z.strictObject({
  nodeId: nodeIdSchema,
  deviceName: z.string().max(POOL_LIMITS.deviceNameChars),
  status: z.enum(['pending', 'denied']),
  receivedAt: timestampSchema,
  decidedAt: timestampSchema.optional(),
  /** Where the request came from (the sender's address), when the caller said. */
  source: z.string().max(SOURCE_CHARS).optional(),
  /** The request's canonical bytes, base64. */
  request: base64,
})
export const pendingFileSchema = z.strictObject({
  version: z.literal(FILE_VERSION),
  requests: z.array(pendingRecordSchema),
})
export type PendingRecord = z.infer<typeof pendingRecordSchema>

/** A join token as the admin lists it. The secret is never stored. */
export interface JoinTokenInfo {
  tokenId: string
  role: 'member' | 'client'
  createdAt: number
  expiresAt: number
  singleUse: boolean
  usedBy: { nodeId: string; at: number }[]
  state: 'active' | 'expired' | 'used'
}

/** A new join token: give `token` to the person joining; it is shown once and not stored. */
export interface CreatedJoinToken extends Omit<JoinTokenInfo, 'usedBy' | 'state'> {
  token: string
}

/** A join request waiting for `mesh pool-approve`, or one the admin denied. */
export interface PendingJoinRequest {
  nodeId: string
  deviceName: string
  status: 'pending' | 'denied'
  receivedAt: number
  decidedAt?: number | undefined
  /** The sender's address, when the request came over the network. */
  source?: string | undefined
}

/** The admin's join queue: requests waiting now, and its limits. */
export interface JoinQueueStats {
  waiting: number
  /** {@link MAX_PENDING_JOIN_REQUESTS} */
  capacity: number
  /** {@link MAX_PENDING_JOIN_REQUESTS_PER_SOURCE} */
  perSource: number
}

/** A signed answer, ready to send back to the joining device. */
export interface SignedJoinResponse {
  response: JoinResponse
  responseBytes: Uint8Array
}

/**
 * What the admin decided about a join request. Every outcome but `dropped` and `not-queued` carries
 * a signed response for the device; `dropped` means the bytes were not a join request at all, and
 * `not-queued` that the request would have waited for approval but the queue (or its source's
 * share of it) is full: count it and send nothing (the device asks again). For `wrong-pool`, the
 * agent usually sends nothing either: another pool's admin will answer.
 */
export type JoinDecision =
  | ({ outcome: 'accepted'; request: JoinRequest; certificate: Certificate } & SignedJoinResponse)
  | ({ outcome: 'pending'; request: JoinRequest } & SignedJoinResponse)
  | ({ outcome: 'refused'; reason: JoinRefusalReason; request: JoinRequest } & SignedJoinResponse)
  | { outcome: 'not-queued'; reason: JoinQueueDropReason; request: JoinRequest }
  | { outcome: 'dropped'; error: JoinRequestError }

export interface OpenPoolAdminOptions {
  /** Shared or sized by the caller; default remembers 10 000 requests for 10 minutes. */
  replayCache?: ReplayCache
  /** Default {@link CLOCK_SKEW_MS}. */
  clockSkewMs?: number
  /** Lifetime of certificates this admin issues; default 30 days. */
  certificateTtlMs?: number
  /** Default: now. Used to check (and renew) this node's own certificate. */
  now?: number
}

export function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}

export function tokenState(token: TokenRecord, now: number): JoinTokenInfo['state'] {
  if (token.singleUse && token.usedBy.length > 0) return 'used'
  if (now > token.expiresAt) return 'expired'
  return 'active'
}
