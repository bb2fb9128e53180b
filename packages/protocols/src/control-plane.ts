import { z } from 'zod'

// The shapes the control plane's REST API and its clients (agents, the SDK) share.

/** A libp2p PeerId string (base58btc), as every Meshnet node id is. */
export const nodeIdSchema = z.string().regex(/^[1-9A-HJ-NP-Za-km-z]{40,60}$/, 'not a node id')

/** `pool-` and 26 base32 characters: 128 bits of the hash of the pool's root key. */
export const POOL_ID_PATTERN = /^pool-[a-z2-7]{26}$/

export const poolIdSchema = z
  .string()
  .regex(POOL_ID_PATTERN, 'not a pool id (pool- and 26 base32 characters)')

export const jobIdSchema = z.uuid('not a job id')

/** Multiaddrs or host:port strings a device can be reached at. */
export const addressesSchema = z.array(z.string().min(1).max(512)).max(32)

/** A model a device holds: its file name, SHA-256 and size. */
export const modelInfoSchema = z.strictObject({
  name: z.string().min(1).max(256),
  sha256: z.string().regex(/^[0-9a-f]{64}$/, 'not a lowercase hex SHA-256'),
  bytes: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER),
})

/** What a device offers: in ring announcements and in control-plane registrations. */
export const capabilitiesSchema = z.strictObject({
  /** Memory the member offers for weights and caches; fixed for the agent's lifetime. */
  capacityBytes: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER),
  /** Free memory when announced (informational; plans use capacityBytes). */
  freeMemoryBytes: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER),
  /** Measured compute score (higher is faster). */
  computeScore: z.number().nonnegative().max(1e12),
  engines: z.array(z.string().min(1).max(64)).max(8),
  models: z.array(modelInfoSchema).max(32),
  /**
   * The shard this member holds for its ring's plan and how far its weights have loaded, so that
   * every member sees when the ring is ready. Not a plan input: a change starts no new epoch.
   */
  shard: z
    .strictObject({
      layers: z.tuple([
        z
          .number()
          .int()
          .min(0)
          .max(1 << 24),
        z
          .number()
          .int()
          .min(0)
          .max(1 << 24),
      ]),
      state: z.enum(['loading', 'ready', 'failed']),
      bytes: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER),
      loadedBytes: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER),
      error: z.string().max(512).optional(),
    })
    .optional(),
})
export type Capabilities = z.infer<typeof capabilitiesSchema>

/** A device name: printable, no surrounding spaces. */
export const deviceNameSchema = z
  .string()
  .min(1)
  .max(64)
  .regex(/^\S(.*\S)?$/u, 'must not start or end with spaces')
  .refine((name) => !/\p{Cc}/u.test(name), 'must not contain control characters')

/** Standard base64 of at most `maxBytes` bytes. */
export const base64Of = (maxBytes: number) =>
  z
    .base64('not base64')
    .max(Math.ceil(maxBytes / 3) * 4, `over ${maxBytes} bytes`)
    .transform((text) => new Uint8Array(Buffer.from(text, 'base64')))
