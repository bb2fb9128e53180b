// `/meshnet/pool-ring/1.0.0`: a pool member answers another member or an SDK client with its view
// of the pool's ring. One request and one reply, JSON in length-prefixed frames. Also the DHT key
// under which pool members announce themselves.
import { CID } from 'multiformats/cid'
import * as raw from 'multiformats/codecs/raw'
import { sha256 } from 'multiformats/hashes/sha2'
import { z } from 'zod'

export const POOL_RING_PROTOCOL = '/meshnet/pool-ring/1.0.0'

/** Largest ring-status request: `{"poolId": …}`. */
export const MAX_RING_REQUEST_BYTES = 1024
/** Largest ring status a member sends. */
export const MAX_RING_STATUS_BYTES = 256 * 1024

/** What a client asks. */
export const ringStatusRequestSchema = z.object({ poolId: z.string().min(1).max(128) })

/** A member's view of the ring: members, their addresses and the model they serve. */
export const ringStatusSchema = z.object({
  poolId: z.string().max(128),
  epoch: z.int().min(0),
  converged: z.boolean(),
  model: z.object({ name: z.string().max(256), sha256: z.string().max(128) }).nullable(),
  members: z
    .array(
      z.object({
        nodeId: z.string().max(128),
        addresses: z.array(z.string().max(1024)).max(64),
      }),
    )
    .max(1024),
})
export type RingStatus = z.infer<typeof ringStatusSchema>

/** What a member answers instead when it refuses (the asker is not a member, a bad request). */
export const ringErrorSchema = z.object({
  error: z.object({ code: z.string().max(128), message: z.string().max(4096) }),
})
export type RingStatusError = z.infer<typeof ringErrorSchema>

const encoder = new TextEncoder()

/** The DHT key under which members of a pool announce themselves (provider records). */
export async function poolRendezvousKey(poolId: string): Promise<CID> {
  return CID.create(1, raw.code, await sha256.digest(encoder.encode(`meshnet:pool-rendezvous:${poolId}`)))
}
