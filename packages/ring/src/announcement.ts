import { publicKeyFromRaw } from '@libp2p/crypto/keys'
import { peerIdFromPublicKey } from '@libp2p/peer-id'
import { MeshError } from '@meshnet/core'
import { type NodeIdentity, verifySignature } from '@meshnet/identity'
import { type Capabilities, capabilitiesSchema } from '@meshnet/protocols'
import { decode, encode } from 'cborg'
import { z } from 'zod'

/** Signature domain of ring announcements. */
export const ANNOUNCEMENT_DOMAIN = 'ring-announcement/v1'
/** Largest encoded announcement accepted from the network. */
export const MAX_ANNOUNCEMENT_BYTES = 16 * 1024

/** Capabilities are the same contract in ring announcements and control-plane registrations. */
export type { Capabilities }

const bytes = (max: number) =>
  z
    .custom<Uint8Array<ArrayBufferLike>>((v) => v instanceof Uint8Array, 'bytes')
    .refine((b) => b.length <= max, `at most ${max} bytes`)

const nodeIdSchema = z.string().min(1).max(128)

/** Most node ids one beat asks for (`want`), and how many characters of each it sends. */
export const MAX_WANTED = 64
export const WANT_ID_CHARS = 12
/** Most obituaries one message carries. */
export const MAX_OBITUARIES = 8

const obituarySchema = z.strictObject({ nodeId: nodeIdSchema, seq: z.number().int().nonnegative() })
/** A member dropped for silence or a closed connection: its id and the last seq heard from it. */
export type Obituary = z.infer<typeof obituarySchema>

/** What every ring message carries: who, when, the view it holds, what it asks for. */
const common = {
  v: z.literal(1),
  poolId: z.string().min(1).max(128),
  nodeId: nodeIdSchema,
  publicKey: bytes(32).refine((b) => b.length === 32, '32 bytes'),
  /** Sender's clock in ms; strictly increases per sender, so old copies are ignored. */
  seq: z.number().int().nonnegative(),
  /** What the sender currently sees: its epoch and membership digest. */
  view: z.strictObject({ epoch: z.number().int().nonnegative(), digest: z.string().max(128) }),
  /** True in the last message of a member that is stopping. */
  leaving: z.boolean(),
  /**
   * Members the sender heard beats from but holds no full announcement of (the last
   * `WANT_ID_CHARS` characters of each node id): those members announce in full again.
   */
  want: z.array(z.string().min(1).max(WANT_ID_CHARS)).max(MAX_WANTED).optional(),
  /** Members the sender dropped (silent, or their connection closed) while its view settles. */
  gone: z.array(obituarySchema).max(MAX_OBITUARIES).optional(),
}

/** A full announcement: the member's record (certificate, capabilities, addresses) and its view. */
const fullSchema = z.strictObject({
  ...common,
  addresses: z.array(z.string().max(512)).max(16),
  /** The member's pool certificate (encoded as the pool package encodes it). */
  certificate: bytes(4096),
  capabilities: capabilitiesSchema,
})
/** A beat: liveness and the view only, for a member whose full announcement the ring holds. */
const beatSchema = z.strictObject({
  ...common,
  beat: z.literal(true),
  /** Seq of the sender's latest full announcement: a member holding an older one asks for it. */
  rseq: z.number().int().nonnegative().optional(),
})
const announcementSchema = z.union([fullSchema, beatSchema])

export type FullAnnouncement = z.infer<typeof fullSchema>
export type Beat = z.infer<typeof beatSchema>
/** A ring message: a full announcement or a beat. */
export type Announcement = FullAnnouncement | Beat

/** True for a full announcement (which carries the certificate that `verifyMember` checks). */
export function isFullAnnouncement(announcement: Announcement): announcement is FullAnnouncement {
  return !('beat' in announcement)
}

const envelopeSchema = z.strictObject({ body: bytes(MAX_ANNOUNCEMENT_BYTES), sig: bytes(64) })

export type AnnouncementDropReason =
  | 'oversized'
  | 'malformed'
  | 'bad-signature'
  | 'node-id-mismatch'
  | 'wrong-pool'

/** An announcement that was refused, with the reason it is counted under. */
export class AnnouncementError extends MeshError {
  override name = 'AnnouncementError' as const
  readonly reason: AnnouncementDropReason
  constructor(reason: AnnouncementDropReason, message: string) {
    super('ERR_BAD_ANNOUNCEMENT', message)
    this.reason = reason
  }
}

/** Encodes and signs an announcement with the member's device key. */
export function encodeAnnouncement(identity: NodeIdentity, announcement: Announcement): Uint8Array {
  const body = encode(announcementSchema.parse(announcement))
  return encode({ body, sig: identity.sign(ANNOUNCEMENT_DOMAIN, body) })
}

export interface DecodeAnnouncementOptions {
  /**
   * The node the transport proved these bytes come from (gossipsub's StrictSign origin, or the
   * remote peer of a noise-authenticated stream). An announcement of that very node is its own
   * signed by its key already, and its signature is not checked a second time.
   */
  origin?: string
}

/**
 * Decodes untrusted bytes: size cap, CBOR, schema, pool, node id = PeerId of the key, signature.
 * Throws AnnouncementError (with a drop reason) and nothing else.
 */
export function decodeAnnouncement(
  data: Uint8Array,
  poolId: string,
  options: DecodeAnnouncementOptions = {},
): Announcement {
  if (data.length > MAX_ANNOUNCEMENT_BYTES + 128) {
    throw new AnnouncementError('oversized', `announcement of ${data.length} bytes is over the limit`)
  }
  let announcement: Announcement
  let envelope: z.infer<typeof envelopeSchema>
  try {
    envelope = envelopeSchema.parse(decode(data, { strict: true, useMaps: false }))
    announcement = announcementSchema.parse(decode(envelope.body, { strict: true, useMaps: false }))
  } catch (err) {
    throw new AnnouncementError(
      'malformed',
      `malformed announcement: ${(err as Error).message.slice(0, 200)}`,
    )
  }
  if (announcement.poolId !== poolId) {
    throw new AnnouncementError('wrong-pool', `announcement for pool ${announcement.poolId}, not ${poolId}`)
  }
  let nodeId: string
  try {
    nodeId = peerIdFromPublicKey(publicKeyFromRaw(announcement.publicKey)).toString()
  } catch {
    throw new AnnouncementError('malformed', 'announcement public key is not an Ed25519 key')
  }
  if (nodeId !== announcement.nodeId) {
    throw new AnnouncementError(
      'node-id-mismatch',
      `announcement node id ${announcement.nodeId} is not its key's`,
    )
  }
  if (
    options.origin !== nodeId &&
    !verifySignature(announcement.publicKey, ANNOUNCEMENT_DOMAIN, envelope.body, envelope.sig)
  ) {
    throw new AnnouncementError('bad-signature', `announcement from ${nodeId} has a bad signature`)
  }
  return announcement
}
