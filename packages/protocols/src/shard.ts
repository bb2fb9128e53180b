import { endianness } from 'node:os'
import { parseWith } from '@meshnet/core'
import { fp16ToFp32, fp32ToFp16 } from '@meshnet/gguf'
import { z } from 'zod'
import { ShardSessionError } from './errors.ts'

/**
 * `/meshnet/shard/1.0.0`: sharded sessions between a coordinator and ring members, and links
 * between members. Every frame is a length-prefixed frame of `@meshnet/discovery` (unsigned LEB128
 * length, then the bytes) whose first byte is its kind. Control frames carry UTF-8 JSON; data
 * frames a fixed little-endian header and raw values. docs/protocols.md ("Sharded sessions")
 * specifies every frame.
 */
export const SHARD_PROTOCOL = '/meshnet/shard/1.0.0'

/** Largest control frame (JSON) accepted, and the cap of the first frame of every stream. */
export const MAX_CONTROL_FRAME_BYTES = 64 * 1024
/** Largest prompt batch a session may use (positions per STEP frame). */
export const MAX_SHARD_BATCH = 512
/** Largest data frame any session may use, whatever its shape. */
export const MAX_DATA_FRAME_BYTES = 128 * 1024 * 1024 - 64

export const SHARD_FRAME = {
  OPEN: 0x01,
  LINK_HELLO: 0x02,
  READY: 0x03,
  CONNECT: 0x04,
  CONNECTED: 0x05,
  LINK_ACCEPT: 0x06,
  LINK_MODE: 0x07,
  ERROR: 0x08,
  CLOSE: 0x09,
  STEP: 0x10,
  HIDDEN: 0x11,
  PARTIAL: 0x12,
  OUTPUT: 0x13,
  EMBEDDING: 0x14,
} as const

export type ActivationType = 'f32' | 'f16'
const DTYPE: Record<ActivationType, number> = { f32: 0, f16: 1 }
const FLAG_WANT = 1

if (endianness() !== 'LE') {
  // Values are copied as typed arrays; a big-endian host would need byte swapping.
  throw new ShardSessionError('sharded sessions need a little-endian host')
}

// ---- control frames (JSON) --------------------------------------------------------------------

const nodeId = z
  .string()
  .min(1)
  .max(128)
  .regex(/^[1-9A-HJ-NP-Za-km-z]+$/, 'must be a node id (base58 PeerId)')
const hex = (bytes: number) => z.string().regex(new RegExp(`^[0-9a-f]{${bytes * 2}}$`))
const index = z
  .number()
  .int()
  .min(0)
  .max(1 << 24)
const range = z.tuple([index, index]).refine(([a, b]) => a <= b, 'must be [start, end) with start <= end')

export const sessionIdSchema = hex(16)
export const sha256Schema = hex(32)
export const poolIdSchema = z.string().min(1).max(64)

export const memberRefSchema = z.strictObject({
  nodeId,
  /** Multiaddrs another member may dial (each ending in /p2p/<nodeId>); empty: the peer store's. */
  addrs: z.array(z.string().min(1).max(512)).max(16),
})
export type MemberRef = z.infer<typeof memberRefSchema>

export const shardOpenSchema = z
  .strictObject({
    v: z.literal(1),
    poolId: poolIdSchema,
    session: sessionIdSchema,
    model: z.strictObject({ sha256: sha256Schema }),
    mode: z.enum(['pipeline', 'tensor']),
    rank: z.number().int().min(0).max(63),
    members: z.array(memberRefSchema).min(1).max(64),
    shard: z.strictObject({
      /** Absent: every layer (tensor parallel). */
      layers: range.optional(),
      heads: range.optional(),
      ffn: range.optional(),
      embed: z.boolean(),
      head: z.boolean(),
    }),
    contextSize: z
      .number()
      .int()
      .min(1)
      .max(1 << 20),
    maxBatch: z.number().int().min(1).max(MAX_SHARD_BATCH),
    kvCacheType: z.enum(['f16', 'f32']),
    activations: z.enum(['f32', 'f16']),
    /** Candidates the output member returns per wanted step (1 = greedy). */
    topK: z
      .number()
      .int()
      .min(1)
      .max(1 << 20),
    /** Member-to-member links: a direct encrypted TCP channel when it can be set up, or libp2p streams only. */
    links: z.enum(['direct', 'libp2p']),
    /**
     * The output member adds to every OUTPUT with candidates the log-sum-exp of its whole row of
     * logits (tensor parallel: of its vocabulary rows), for exact log-probabilities. Sent only when
     * asked for: members before it refuse an OPEN that has it.
     */
    logSumExp: z.literal(true).optional(),
    /**
     * An embedding session (pipeline only): the output member answers every step with EMBEDDING
     * instead of OUTPUT, pooling the final hidden states (after the output norm) of the positions
     * from 0 this way; a step that wants output gets the pooled, L2-normalized vector.
     */
    embedding: z.enum(['mean', 'cls', 'last']).optional(),
  })
  .refine((o) => o.rank < o.members.length, 'rank must index members')
  .refine((o) => o.embedding === undefined || o.mode === 'pipeline', {
    message: 'embedding sessions are pipelines',
    path: ['embedding'],
  })
export type OpenMessage = z.infer<typeof shardOpenSchema>

export const linkHelloSchema = z.strictObject({
  v: z.literal(1),
  poolId: poolIdSchema,
  /** The coordinator that opened the session (sessions are keyed by coordinator and id). */
  coordinator: nodeId,
  session: sessionIdSchema,
  /** Rank of the member that opens the link. */
  rank: z.number().int().min(0).max(63),
  direct: z.boolean(),
})
export type LinkHello = z.infer<typeof linkHelloSchema>

export const shardReadySchema = z.strictObject({
  weightBytes: z.number().int().min(0),
  kvBytes: z.number().int().min(0),
  loadMs: z.number().min(0),
  /** The weights were already in memory (another session of the same shard). */
  reused: z.boolean(),
  config: z.strictObject({
    layers: index,
    embd: index,
    vocab: index,
    heads: index,
    kvHeads: index,
    ff: index,
  }),
})
export type ReadyMessage = z.infer<typeof shardReadySchema>

export const shardConnectedSchema = z.strictObject({
  transports: z.array(z.enum(['direct', 'libp2p'])).max(64),
})

export const linkAcceptSchema = z.strictObject({
  direct: z
    .strictObject({
      port: z.number().int().min(1).max(65535),
      id: hex(16),
      key: hex(32),
    })
    .optional(),
})
export type LinkAccept = z.infer<typeof linkAcceptSchema>

export const linkModeSchema = z.strictObject({ transport: z.enum(['direct', 'libp2p']) })

export const shardErrorSchema = z.strictObject({
  name: z.string().min(1).max(64),
  message: z.string().max(4096),
  /** A member this one could no longer reach (its link failed). */
  suspect: nodeId.optional(),
})
export type ShardErrorMessage = z.infer<typeof shardErrorSchema>

export const emptySchema = z.strictObject({})

const encoder = new TextEncoder()
const decoder = new TextDecoder('utf-8', { fatal: true })

/** A control frame: the kind byte, then the message as UTF-8 JSON. */
export function encodeControl(kind: number, message: unknown): Uint8Array {
  const json = encoder.encode(JSON.stringify(message))
  if (json.byteLength + 1 > MAX_CONTROL_FRAME_BYTES) {
    throw new ShardSessionError(`a control message of ${json.byteLength} bytes is over the 64 KiB cap`)
  }
  const frame = new Uint8Array(json.byteLength + 1)
  frame[0] = kind
  frame.set(json, 1)
  return frame
}

/** Parses a control frame of the expected kind; a ShardSessionError says what was wrong. */
export function decodeControl<T>(frame: Uint8Array, kind: number, schema: z.ZodType<T>, what: string): T {
  if (frame.byteLength > MAX_CONTROL_FRAME_BYTES) {
    throw new ShardSessionError(`${what} frame of ${frame.byteLength} bytes is over the 64 KiB cap`)
  }
  if (frame[0] !== kind) {
    throw new ShardSessionError(`expected ${what} (frame kind ${kind}), got frame kind ${frame[0]}`)
  }
  let value: unknown
  try {
    value = JSON.parse(decoder.decode(frame.subarray(1)))
  } catch {
    throw new ShardSessionError(`${what} frame is not UTF-8 JSON`)
  }
  return parseWith(
    schema,
    value,
    `${what} frame:`,
    (message, options) => new ShardSessionError(message, options),
  )
}

export function encodeShardError(err: unknown, suspect?: string): Uint8Array {
  const e = err as Error
  const name = typeof e?.name === 'string' && e.name.length > 0 ? e.name.slice(0, 64) : 'Error'
  const message = String(e?.message ?? err).slice(0, 4096)
  return encodeControl(
    SHARD_FRAME.ERROR,
    suspect === undefined ? { name, message } : { name, message, suspect },
  )
}

// ---- data frames (binary, little-endian) ------------------------------------------------------

export interface StepFrame {
  seq: number
  pos: number
  want: boolean
  tokens: number[]
}

const STEP_HEADER = 12

export function encodeStep(step: StepFrame): Uint8Array {
  const n = step.tokens.length
  const frame = new Uint8Array(STEP_HEADER + 4 * n)
  const view = new DataView(frame.buffer)
  frame[0] = SHARD_FRAME.STEP
  frame[1] = step.want ? FLAG_WANT : 0
  view.setUint16(2, n, true)
  view.setUint32(4, step.seq, true)
  view.setUint32(8, step.pos, true)
  for (let i = 0; i < n; i++) view.setUint32(STEP_HEADER + 4 * i, step.tokens[i]!, true)
  return frame
}

export function decodeStep(frame: Uint8Array, maxBatch: number): StepFrame {
  if (frame.byteLength < STEP_HEADER || frame[0] !== SHARD_FRAME.STEP) throw malformed('STEP')
  const view = viewOf(frame)
  const n = view.getUint16(2, true)
  if (n < 1 || n > maxBatch || frame.byteLength !== STEP_HEADER + 4 * n) {
    throw new ShardSessionError(
      `STEP frame of ${n} tokens (${frame.byteLength} bytes) is outside 1..${maxBatch}`,
    )
  }
  const tokens = new Array<number>(n)
  for (let i = 0; i < n; i++) tokens[i] = view.getUint32(STEP_HEADER + 4 * i, true)
  return {
    seq: view.getUint32(4, true),
    pos: view.getUint32(8, true),
    want: (frame[1]! & FLAG_WANT) !== 0,
    tokens,
  }
}

export interface HiddenFrame {
  seq: number
  pos: number
  n: number
  want: boolean
  /** Compute time of the stages so far (µs). */
  computeUs: number
  /** Bytes the stages so far sent on links for this step (this frame included). */
  linkBytes: number
  hidden: Float32Array
}

const HIDDEN_HEADER = 32

export function hiddenFrameBytes(n: number, embd: number, dtype: ActivationType): number {
  return HIDDEN_HEADER + n * embd * (dtype === 'f16' ? 2 : 4)
}

export function encodeHidden(h: HiddenFrame, dtype: ActivationType): Uint8Array {
  const values = h.hidden.length
  const frame = new Uint8Array(HIDDEN_HEADER + values * (dtype === 'f16' ? 2 : 4))
  const view = new DataView(frame.buffer)
  frame[0] = SHARD_FRAME.HIDDEN
  frame[1] = h.want ? FLAG_WANT : 0
  frame[2] = DTYPE[dtype]
  view.setUint32(4, h.seq, true)
  view.setUint32(8, h.pos, true)
  view.setUint32(12, h.n, true)
  view.setFloat64(16, h.computeUs, true)
  view.setFloat64(24, h.linkBytes, true)
  writeValues(frame, HIDDEN_HEADER, h.hidden, dtype)
  return frame
}

export function decodeHidden(frame: Uint8Array, embd: number, maxBatch: number): HiddenFrame {
  if (frame.byteLength < HIDDEN_HEADER || frame[0] !== SHARD_FRAME.HIDDEN) throw malformed('HIDDEN')
  const view = viewOf(frame)
  const dtype = dtypeOf(frame[2]!)
  const n = view.getUint32(12, true)
  if (n < 1 || n > maxBatch || frame.byteLength !== hiddenFrameBytes(n, embd, dtype)) {
    throw new ShardSessionError(
      `HIDDEN frame of ${frame.byteLength} bytes does not hold ${n} positions of ${embd} ${dtype} values (1..${maxBatch} positions)`,
    )
  }
  return {
    seq: view.getUint32(4, true),
    pos: view.getUint32(8, true),
    n,
    want: (frame[1]! & FLAG_WANT) !== 0,
    computeUs: finite(view.getFloat64(16, true)),
    linkBytes: finite(view.getFloat64(24, true)),
    hidden: readValues(frame, HIDDEN_HEADER, n * embd, dtype),
  }
}

const PARTIAL_HEADER = 12

export function encodePartial(exchange: number, values: Float32Array, dtype: ActivationType): Uint8Array {
  const frame = new Uint8Array(PARTIAL_HEADER + values.length * (dtype === 'f16' ? 2 : 4))
  const view = new DataView(frame.buffer)
  frame[0] = SHARD_FRAME.PARTIAL
  frame[1] = DTYPE[dtype]
  view.setUint32(4, exchange, true)
  view.setUint32(8, values.length, true)
  writeValues(frame, PARTIAL_HEADER, values, dtype)
  return frame
}

export function decodePartial(
  frame: Uint8Array,
  maxValues: number,
): { exchange: number; values: Float32Array } {
  if (frame.byteLength < PARTIAL_HEADER || frame[0] !== SHARD_FRAME.PARTIAL) throw malformed('PARTIAL')
  const view = viewOf(frame)
  const dtype = dtypeOf(frame[1]!)
  const count = view.getUint32(8, true)
  if (count > maxValues || frame.byteLength !== PARTIAL_HEADER + count * (dtype === 'f16' ? 2 : 4)) {
    throw new ShardSessionError(
      `PARTIAL frame of ${frame.byteLength} bytes does not hold ${count} ${dtype} values`,
    )
  }
  return { exchange: view.getUint32(4, true), values: readValues(frame, PARTIAL_HEADER, count, dtype) }
}

/** Rounds values the way a `dtype` PARTIAL or HIDDEN frame carries them (f16: through half floats). */
export function roundTrip(values: Float32Array, dtype: ActivationType): Float32Array {
  if (dtype === 'f32') return values
  const out = new Float32Array(values.length)
  for (let i = 0; i < values.length; i++) out[i] = fp16ToFp32(fp32ToFp16(values[i]!))
  return out
}

export interface OutputFrame {
  seq: number
  /** Compute time of every stage of this step (µs). */
  computeUs: number
  /** Tensor parallel: time the output member spent waiting in all-reduce exchanges (µs). */
  waitUs: number
  exchanges: number
  /** Bytes sent on member-to-member links for this step. */
  linkBytes: number
  /** Candidate token ids and their logits, best first (empty when the step wanted none). */
  ids: Uint32Array
  logits: Float32Array
  /**
   * log Σ exp(logit) over the whole row the candidates come from (f64, after the logits); only in
   * sessions opened with `logSumExp`, only with candidates.
   */
  logSumExp?: number
}

const OUTPUT_HEADER = 40
/** OUTPUT flag (byte 1): an f64 log-sum-exp follows the logits. */
const OUTPUT_HAS_LOG_SUM_EXP = 0x01

export function encodeOutput(o: OutputFrame): Uint8Array {
  const k = o.ids.length
  const lse = o.logSumExp
  const frame = new Uint8Array(OUTPUT_HEADER + 8 * k + (lse === undefined ? 0 : 8))
  const view = new DataView(frame.buffer)
  frame[0] = SHARD_FRAME.OUTPUT
  if (lse !== undefined) {
    frame[1] = OUTPUT_HAS_LOG_SUM_EXP
    view.setFloat64(OUTPUT_HEADER + 8 * k, lse, true)
  }
  view.setUint32(4, o.seq, true)
  view.setUint32(8, k, true)
  view.setUint32(12, o.exchanges, true)
  view.setFloat64(16, o.computeUs, true)
  view.setFloat64(24, o.waitUs, true)
  view.setFloat64(32, o.linkBytes, true)
  frame.set(new Uint8Array(o.ids.buffer, o.ids.byteOffset, 4 * k), OUTPUT_HEADER)
  frame.set(new Uint8Array(o.logits.buffer, o.logits.byteOffset, 4 * k), OUTPUT_HEADER + 4 * k)
  return frame
}

export function decodeOutput(frame: Uint8Array, maxK: number, vocab: number): OutputFrame {
  if (frame.byteLength < OUTPUT_HEADER || frame[0] !== SHARD_FRAME.OUTPUT) throw malformed('OUTPUT')
  const view = viewOf(frame)
  const k = view.getUint32(8, true)
  const flags = frame[1]!
  const hasLse = (flags & OUTPUT_HAS_LOG_SUM_EXP) !== 0
  if (
    k > maxK ||
    (flags & ~OUTPUT_HAS_LOG_SUM_EXP) !== 0 ||
    (hasLse && k === 0) ||
    frame.byteLength !== OUTPUT_HEADER + 8 * k + (hasLse ? 8 : 0)
  ) {
    throw new ShardSessionError(
      `OUTPUT frame of ${frame.byteLength} bytes does not hold ${k} candidates (at most ${maxK})${hasLse ? ' and a log-sum-exp' : ''}`,
    )
  }
  let logSumExp: number | undefined
  if (hasLse) {
    logSumExp = view.getFloat64(OUTPUT_HEADER + 8 * k, true)
    if (!Number.isFinite(logSumExp))
      throw new ShardSessionError('OUTPUT frame holds a log-sum-exp that is not finite')
  }
  const body = frame.slice(OUTPUT_HEADER, OUTPUT_HEADER + 8 * k)
  const ids = new Uint32Array(body.buffer, 0, k)
  for (const id of ids) {
    if (id >= vocab)
      throw new ShardSessionError(`OUTPUT frame names token ${id}, outside the vocabulary of ${vocab}`)
  }
  return {
    seq: view.getUint32(4, true),
    exchanges: view.getUint32(12, true),
    computeUs: finite(view.getFloat64(16, true)),
    waitUs: finite(view.getFloat64(24, true)),
    linkBytes: finite(view.getFloat64(32, true)),
    ids,
    logits: new Float32Array(body.buffer, 4 * k, k),
    ...(logSumExp === undefined ? {} : { logSumExp }),
  }
}

/**
 * The output member's answer to one step of an embedding session: the input's pooled,
 * L2-normalized final hidden state (`embd` f32 values) when the step wanted output, else no values.
 */
export interface EmbeddingFrame {
  seq: number
  /** Compute time of every stage of this step (µs). */
  computeUs: number
  /** Bytes sent on member-to-member links for this step. */
  linkBytes: number
  /** `embd` values, or none. */
  values: Float32Array
}

const EMBEDDING_HEADER = 32

/** Widest embedding an EMBEDDING frame carries (models are at most some 20k wide). */
export const MAX_EMBEDDING_VALUES = 65_536

export function embeddingFrameBytes(values: number): number {
  return EMBEDDING_HEADER + 4 * values
}

export function encodeEmbedding(e: EmbeddingFrame): Uint8Array {
  if (e.values.length > MAX_EMBEDDING_VALUES) {
    throw new ShardSessionError(
      `an embedding of ${e.values.length} values is over the ${MAX_EMBEDDING_VALUES} cap`,
    )
  }
  const frame = new Uint8Array(embeddingFrameBytes(e.values.length))
  const view = new DataView(frame.buffer)
  frame[0] = SHARD_FRAME.EMBEDDING
  view.setUint32(4, e.seq, true)
  view.setUint32(8, e.values.length, true)
  view.setFloat64(16, e.computeUs, true)
  view.setFloat64(24, e.linkBytes, true)
  writeValues(frame, EMBEDDING_HEADER, e.values, 'f32')
  return frame
}

/** Parses an EMBEDDING frame of a model `embd` wide: `embd` values or none, every one finite. */
export function decodeEmbedding(frame: Uint8Array, embd: number): EmbeddingFrame {
  if (frame.byteLength < EMBEDDING_HEADER || frame[0] !== SHARD_FRAME.EMBEDDING) throw malformed('EMBEDDING')
  const view = viewOf(frame)
  const count = view.getUint32(8, true)
  if (
    (count !== 0 && count !== embd) ||
    count > MAX_EMBEDDING_VALUES ||
    frame.byteLength !== embeddingFrameBytes(count)
  ) {
    throw new ShardSessionError(
      `EMBEDDING frame of ${frame.byteLength} bytes does not hold ${embd} values (or none), it says ${count}`,
    )
  }
  const values = readValues(frame, EMBEDDING_HEADER, count, 'f32')
  if (!values.every(Number.isFinite))
    throw new ShardSessionError('EMBEDDING frame holds a value that is not finite')
  return {
    seq: view.getUint32(4, true),
    computeUs: finite(view.getFloat64(16, true)),
    linkBytes: finite(view.getFloat64(24, true)),
    values,
  }
}

/** Kind byte of a frame (0 for an empty one). */
export function shardFrameKind(frame: Uint8Array): number {
  return frame[0] ?? 0
}

function writeValues(frame: Uint8Array, at: number, values: Float32Array, dtype: ActivationType): void {
  if (dtype === 'f32') {
    frame.set(new Uint8Array(values.buffer, values.byteOffset, values.length * 4), at)
    return
  }
  const view = new DataView(frame.buffer, frame.byteOffset)
  for (let i = 0; i < values.length; i++) view.setUint16(at + 2 * i, fp32ToFp16(values[i]!), true)
}

function readValues(frame: Uint8Array, at: number, count: number, dtype: ActivationType): Float32Array {
  if (dtype === 'f32') {
    // A copy: the frame's offset in its buffer need not be a multiple of 4.
    return new Float32Array(frame.slice(at, at + count * 4).buffer)
  }
  const view = viewOf(frame)
  const out = new Float32Array(count)
  for (let i = 0; i < count; i++) out[i] = fp16ToFp32(view.getUint16(at + 2 * i, true))
  return out
}

function dtypeOf(byte: number): ActivationType {
  if (byte === 0) return 'f32'
  if (byte === 1) return 'f16'
  throw new ShardSessionError(`unknown activation type ${byte} (0 = f32, 1 = f16)`)
}

function viewOf(frame: Uint8Array): DataView {
  return new DataView(frame.buffer, frame.byteOffset, frame.byteLength)
}

function finite(value: number): number {
  return Number.isFinite(value) && value >= 0 ? value : 0
}

function malformed(what: string): ShardSessionError {
  return new ShardSessionError(`malformed ${what} frame`)
}
