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

const announcementSchema = z.strictObject({
  v: z.literal(1),
  poolId: z.string().min(1).max(128),
  nodeId: z.string().min(1).max(128),
  publicKey: bytes(32).refine((b) => b.length === 32, '32 bytes'),
  addresses: z.array(z.string().max(512)).max(16),
  /** The member's pool certificate (encoded as the pool package encodes it). */
  certificate: bytes(4096),
  capabilities: capabilitiesSchema,
  /** Sender's clock in ms; strictly increases per sender, so old copies are ignored. */
  seq: z.number().int().nonnegative(),
  /** What the sender currently sees: its epoch and membership digest. */
  view: z.strictObject({ epoch: z.number().int().nonnegative(), digest: z.string().max(128) }),
  /** True in the last message of a member that is stopping. */
  leaving: z.boolean(),
})
export type Announcement = z.infer<typeof announcementSchema>

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

/**
 * Decodes untrusted bytes: size cap, CBOR, schema, node id = PeerId of the key, signature, pool.
 * Throws AnnouncementError (with a drop reason) and nothing else.
 */
export function decodeAnnouncement(data: Uint8Array, poolId: string): Announcement {
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
  if (!verifySignature(announcement.publicKey, ANNOUNCEMENT_DOMAIN, envelope.body, envelope.sig)) {
    throw new AnnouncementError('bad-signature', `announcement from ${nodeId} has a bad signature`)
  }
  return announcement
}
