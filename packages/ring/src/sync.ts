import { decode, encode } from 'cborg'
import { z } from 'zod'
import { AnnouncementError, MAX_ANNOUNCEMENT_BYTES, WANT_ID_CHARS } from './announcement.ts'

/**
 * Direct ring sync between two connected members (push-pull anti-entropy): the asker sends its
 * own fresh full announcement and what it holds of each member; the answer is the answerer's own
 * fresh full announcement and, for each member, its full announcement if the asker lacks it or
 * holds an older one, and its latest beat if newer than the asker's (the view it reports now).
 * Every one is that member's own signed message, checked on arrival exactly as one from gossip.
 */
export const RING_SYNC_PROTOCOL = '/meshnet/ring-sync/1.0.0'
/** Messages one answer carries at most (an asker missing more asks again). */
export const MAX_SYNC_RECORDS = 128
/** Largest sync request or answer. */
export const MAX_RING_SYNC_BYTES = 2 * 1024 * 1024
/** Most entries of a `have` list. */
const MAX_HAVE = 4_096

const signed = z
  .custom<Uint8Array<ArrayBufferLike>>((v) => v instanceof Uint8Array, 'bytes')
  .refine((b) => b.length <= MAX_ANNOUNCEMENT_BYTES + 128, 'announcement over the size limit')

const requestSchema = z.strictObject({
  v: z.literal(1),
  poolId: z.string().min(1).max(128),
  /** The asker's own full announcement, signed now. */
  self: signed,
  /**
   * What the asker holds of each member: the last `WANT_ID_CHARS` of its node id, the seq of its
   * full announcement and the seq of its latest message (a beat, or the same full one).
   */
  have: z
    .array(
      z.tuple([
        z.string().min(1).max(WANT_ID_CHARS),
        z.number().int().nonnegative(),
        z.number().int().nonnegative(),
      ]),
    )
    .max(MAX_HAVE),
})
const answerSchema = z.strictObject({
  v: z.literal(1),
  self: signed,
  records: z.array(signed).max(MAX_SYNC_RECORDS),
})

export type SyncRequest = z.infer<typeof requestSchema>
export type SyncAnswer = z.infer<typeof answerSchema>

export function encodeSyncRequest(request: SyncRequest): Uint8Array {
  return encode(requestSchema.parse(request))
}

export function encodeSyncAnswer(answer: SyncAnswer): Uint8Array {
  return encode(answerSchema.parse(answer))
}

/** Decodes an untrusted sync request; throws AnnouncementError ('oversized' or 'malformed'). */
export function decodeSyncRequest(data: Uint8Array): SyncRequest {
  return parse(requestSchema, data, 'request')
}

/** Decodes an untrusted sync answer; throws AnnouncementError ('oversized' or 'malformed'). */
export function decodeSyncAnswer(data: Uint8Array): SyncAnswer {
  return parse(answerSchema, data, 'answer')
}

function parse<T>(schema: z.ZodType<T>, data: Uint8Array, what: string): T {
  if (data.length > MAX_RING_SYNC_BYTES) {
    throw new AnnouncementError('oversized', `ring sync ${what} of ${data.length} bytes is over the limit`)
  }
  try {
    return schema.parse(decode(data, { strict: true, useMaps: false }))
  } catch (err) {
    throw new AnnouncementError(
      'malformed',
      `malformed ring sync ${what}: ${(err as Error).message.slice(0, 200)}`,
    )
  }
}
