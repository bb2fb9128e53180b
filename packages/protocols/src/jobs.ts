// `/meshnet/job/1.0.0`: a client asks a node to run one generation and reads its tokens as they
// come. One stream per job; frames are varint length-prefixed JSON (format in docs/protocols.md).
import type { AbortOptions, Stream } from '@libp2p/interface'
import { MeshError, type MeshErrorOptions, parseWith } from '@meshnet/core'
import { grammarSpecSchema } from '@meshnet/grammar'
import { CID } from 'multiformats/cid'
import * as raw from 'multiformats/codecs/raw'
import { sha256 } from 'multiformats/hashes/sha2'
import { z } from 'zod'
import { frameStream } from './frames.ts'

export const JOB_PROTOCOL = '/meshnet/job/1.0.0'

/** Largest frame either side sends: a request holds a prompt of at most MAX_JOB_PROMPT_CHARS. */
export const MAX_JOB_FRAME_BYTES = 1024 * 1024

/** Longest prompt a job takes, in characters (with `messages`: their contents together). */
export const MAX_JOB_PROMPT_CHARS = 256 * 1024

/** Most chat messages one job takes. */
export const MAX_JOB_MESSAGES = 1024

/** Most tokens one job generates. */
export const MAX_JOB_TOKENS = 32_768

/** Most alternatives a job token's log-probabilities list (OpenAI's `top_logprobs` cap). */
export const MAX_JOB_TOP_LOGPROBS = 20

/** How a job's model is split: `auto` runs it whole on one member when one can hold it. */
export const JOB_MODES = ['auto', 'pipeline', 'tensor'] as const
export type JobMode = (typeof JOB_MODES)[number]

/** Where a job came from (kept with its stats). */
export type JobOrigin = 'cli' | 'p2p' | 'api' | 'control-plane'

/** Most tools one chat job may declare. */
export const MAX_JOB_TOOLS = 128
/** A tool's or function's name, as OpenAI allows them. */
const toolName = z
  .string()
  .regex(/^[a-zA-Z0-9_-]{1,64}$/, 'must be 1 to 64 letters, digits, underscores or dashes')

/** A call of a tool: its name and its arguments as JSON text (as the model wrote them). */
export const jobToolCallSchema = z.strictObject({
  /** The id an API gave the call, which the tool's answer names (`toolCallId`). */
  id: z.string().min(1).max(256).optional(),
  name: toolName,
  arguments: z.string().max(256 * 1024),
})
export type JobToolCall = z.infer<typeof jobToolCallSchema>

/** A function the model may call in a chat job (the OpenAI shape, without its wrapper). */
export const jobToolSchema = z.strictObject({
  name: toolName,
  description: z.string().max(8192).optional(),
  /** A JSON Schema of its arguments (an object); absent: none. */
  parameters: z.record(z.string(), z.unknown()).optional(),
})
export type JobTool = z.infer<typeof jobToolSchema>

/** One message of a chat job, as the model's chat template sees it. */
export const jobMessageSchema = z.strictObject({
  role: z.enum(['system', 'user', 'assistant', 'tool']),
  content: z.string().max(MAX_JOB_PROMPT_CHARS),
  /** Passed to the template as `message.name` (some templates show it). */
  name: z.string().min(1).max(128).optional(),
  /** An assistant message: the tools it called (from an earlier reply's `toolCalls`). */
  toolCalls: z.array(jobToolCallSchema).max(MAX_JOB_TOOLS).optional(),
  /** A tool message: the id of the call it answers. */
  toolCallId: z.string().min(1).max(256).optional(),
})
export type JobMessage = z.infer<typeof jobMessageSchema>

/**
 * One generation asked of a node: a `prompt` (text the model continues), or chat `messages` that
 * the serving node renders into the prompt with the model's chat template, as its OpenAI API does.
 * Exactly one of the two.
 */
export const jobRequestSchema = z
  .strictObject({
    /** The pool whose ring runs the job; without it the node must be public (`mesh start --public`). */
    poolId: z.string().min(1).max(128).optional(),
    /** The model, by file name or SHA-256 (default: the one the node serves). */
    model: z.string().min(1).max(256).optional(),
    prompt: z.string().min(1).max(MAX_JOB_PROMPT_CHARS).optional(),
    /** A chat instead of a prompt: the node applies the model's chat template, with the generation prompt. */
    messages: z.array(jobMessageSchema).min(1).max(MAX_JOB_MESSAGES).optional(),
    /** Required with `prompt`; with `messages` the default is the rest of the context (as OpenAI's chat). */
    maxTokens: z.int().min(1).max(MAX_JOB_TOKENS).optional(),
    temperature: z.number().min(0).max(100).optional(),
    topK: z.int().min(0).max(1_000_000).optional(),
    topP: z.number().gt(0).max(1).optional(),
    seed: z.int().min(0).max(0xffff_ffff).optional(),
    /** OpenAI's presence penalty: subtracted from the logit of every token generated so far. */
    presencePenalty: z.number().min(-2).max(2).optional(),
    /** OpenAI's frequency penalty: subtracted from a token's logit once per time it was generated so far. */
    frequencyPenalty: z.number().min(-2).max(2).optional(),
    /**
     * Report each token's log-probability (`JobToken.logprobs`) with this many of the likeliest
     * alternatives. Absent: none. Nodes before this field refuse a job that has it.
     */
    logprobs: z.int().min(0).max(MAX_JOB_TOP_LOGPROBS).optional(),
    /**
     * What the output must be (`@meshnet/grammar`): JSON for a schema, a forced tool call. The node
     * that samples keeps to it. Nodes before this field refuse a job that has it.
     */
    grammar: grammarSpecSchema.optional(),
    /**
     * A chat's tools: rendered with the model's template, and the reply's calls parsed into the
     * result's `toolCalls`. Nodes before this field refuse a job that has it.
     */
    tools: z.array(jobToolSchema).max(MAX_JOB_TOOLS).optional(),
    /** `auto` (default): the model decides; `none`; `required`: one call; `{name}`: a call of it. */
    toolChoice: z
      .union([z.enum(['auto', 'none', 'required']), z.strictObject({ name: toolName })])
      .optional(),
    mode: z.enum(JOB_MODES).default('auto'),
    /**
     * Tokenize control-token text in the prompt (`<s>`, `<|im_start|>`) as those tokens (chat
     * templates). A chat's rendered prompt is always tokenized so, as the OpenAI API does.
     */
    parseSpecial: z.boolean().default(false),
  })
  .superRefine((request, ctx) => {
    if (request.prompt === undefined && request.messages === undefined) {
      ctx.addIssue({ code: 'custom', path: [], message: 'give a prompt or chat messages' })
    } else if (request.prompt !== undefined && request.messages !== undefined) {
      ctx.addIssue({
        code: 'custom',
        path: ['messages'],
        message: 'give a prompt or chat messages, not both',
      })
    } else if (request.prompt !== undefined && request.maxTokens === undefined) {
      ctx.addIssue({ code: 'custom', path: ['maxTokens'], message: 'required with a prompt' })
    }
    if (request.tools !== undefined && request.messages === undefined) {
      ctx.addIssue({
        code: 'custom',
        path: ['tools'],
        message: 'need chat messages (a prompt job has no template)',
      })
    }
    if (request.tools !== undefined && request.grammar !== undefined) {
      ctx.addIssue({ code: 'custom', path: ['grammar'], message: 'cannot be given with tools' })
    }
    const names = new Set(request.tools?.map((t) => t.name))
    if (names.size !== (request.tools?.length ?? 0)) {
      ctx.addIssue({ code: 'custom', path: ['tools'], message: 'must have distinct names' })
    }
    const choice = request.toolChoice
    if (typeof choice === 'object' && !names.has(choice.name)) {
      ctx.addIssue({
        code: 'custom',
        path: ['toolChoice'],
        message: `names "${choice.name}", which is not among the tools`,
      })
    }
    const chars = request.messages?.reduce((sum, m) => sum + m.content.length, 0) ?? 0
    if (chars > MAX_JOB_PROMPT_CHARS) {
      ctx.addIssue({
        code: 'custom',
        path: ['messages'],
        message: `hold ${chars} characters; at most ${MAX_JOB_PROMPT_CHARS} together`,
      })
    }
  })
export type JobRequest = z.input<typeof jobRequestSchema>

/** A token as it streams out of a job. */
export interface JobToken {
  /** Vocabulary id. */
  id: number
  /** Its text (empty while a multi-byte character is incomplete). */
  text: string
  /** 0 for the first generated token. */
  index: number
  /** Text held back at the end (a generation that ended inside a character): no new token, same index. */
  textOnly?: true
  /**
   * With the request's `logprobs`: the token's log-probability (the log-softmax at temperature 1 of
   * the logits after the penalties) and the likeliest alternatives, best first.
   */
  logprobs?: JobTokenLogprobs
}

export interface JobTokenLogprobs {
  logprob: number
  top: Array<{ id: number; logprob: number }>
}

const logprobSchema = z.number().max(0)
const tokenLogprobsSchema = z.object({
  logprob: logprobSchema,
  top: z.array(z.object({ id: z.int().min(0), logprob: logprobSchema })).max(MAX_JOB_TOP_LOGPROBS),
})

export interface JobStats {
  tokensPerSecond: number
  timeToFirstTokenMs: number
  totalMs: number
  promptTokens: number
  completionTokens: number
  /** Mean per-hop latency of a sharded run (0 when the whole model ran on one node). */
  hopLatencyMs: number
  /** Bytes that crossed the network for this job's generation. */
  bytesMoved: number
  failovers: number
  /** Node ids of the members that ran the job. */
  members: string[]
  /** Tensor parallel: mean time of one all-reduce exchange (ms). */
  allReduceMs?: number
}

export interface JobResult {
  jobId: string
  /** `single` (node-llama-cpp on one member), `pipeline` or `tensor`. */
  mode: 'single' | 'pipeline' | 'tensor'
  /** SHA-256 of the model file. */
  model: string
  tokens: number[]
  /** Everything generated (with a tool call's text as the model wrote it). */
  text: string
  /**
   * A chat job with tools: the reply's text without its tool calls (null when it is calls alone), and
   * the calls, parsed the way the model's family writes them.
   */
  content?: string | null
  toolCalls?: JobToolCall[]
  stopReason: 'maxTokens' | 'eog' | 'abort' | 'contextFull'
  stats: JobStats
}

/**
 * What a job does while it runs, for live views (the dashboard) and metrics: it starts on some
 * members, streams tokens, may fail over to other members, and ends. `at` is `Date.now()`.
 */
export type JobEvent =
  | {
      type: 'start'
      jobId: string
      at: number
      origin: JobOrigin
      mode: 'single' | 'pipeline' | 'tensor'
      poolId: string | null
      promptTokens: number
    }
  /** The members running the job: when its plan is made, and again after each failover. */
  | { type: 'members'; jobId: string; at: number; members: string[]; failover?: { dead: string[] } }
  | { type: 'token'; jobId: string; at: number; index: number; text: string }
  | {
      type: 'end'
      jobId: string
      at: number
      status: 'completed' | 'failed' | 'cancelled'
      error?: string
      result?: JobResult
    }

/** What runs jobs on a node: the CLI, the job protocol, the OpenAI API and the control plane use it. */
export interface JobRunner {
  /** Streams the job's tokens; the generator's return value is the finished job. */
  run(
    request: JobRequest,
    options: { origin: JobOrigin; signal?: AbortSignal; requester?: string },
  ): AsyncGenerator<JobToken, JobResult, undefined>
}

const statsSchema = z.object({
  tokensPerSecond: z.number(),
  timeToFirstTokenMs: z.number(),
  totalMs: z.number(),
  promptTokens: z.int(),
  completionTokens: z.int(),
  hopLatencyMs: z.number(),
  bytesMoved: z.number(),
  failovers: z.int(),
  members: z.array(z.string()).max(1024),
  allReduceMs: z.number().optional(),
})

const resultSchema = z.object({
  jobId: z.string().max(128),
  mode: z.enum(['single', 'pipeline', 'tensor']),
  model: z.string().max(128),
  tokens: z.array(z.int().min(0)),
  text: z.string(),
  content: z.string().nullable().optional(),
  toolCalls: z.array(jobToolCallSchema).max(MAX_JOB_TOOLS).optional(),
  stopReason: z.enum(['maxTokens', 'eog', 'abort', 'contextFull']),
  stats: statsSchema,
})

/** Frames a node sends back, in order: one `accepted`, `token`s, then `end` or `error`. */
const replySchema = z.discriminatedUnion('type', [
  z.object({ type: z.literal('accepted'), jobId: z.string().max(128) }),
  z.object({
    type: z.literal('token'),
    id: z.int().min(0),
    text: z.string().max(4096),
    index: z.int().min(0),
    textOnly: z.literal(true).optional(),
    logprobs: tokenLogprobsSchema.optional(),
  }),
  z.object({ type: z.literal('end'), result: resultSchema }),
  z.object({
    type: z.literal('error'),
    error: z.object({ name: z.string().max(128), code: z.string().max(128), message: z.string().max(4096) }),
  }),
])
export type JobReply = z.infer<typeof replySchema>

/** The node refused or failed the job; `code` is the node's (ERR_POOL_ACCESS, ERR_RATE_LIMITED, ...). */
export class JobFailedError extends MeshError {
  override name = 'JobFailedError' as const
  readonly remoteName: string
  constructor(code: string, remoteName: string, message: string, options?: MeshErrorOptions) {
    super(code, message, options)
    this.remoteName = remoteName
  }
}

/** The node broke the job protocol (bad frame, stream closed early). */
export class JobProtocolError extends MeshError {
  override name = 'JobProtocolError' as const
  constructor(message: string, options?: MeshErrorOptions) {
    super('ERR_JOB_PROTOCOL', message, options)
  }
}

const encoder = new TextEncoder()
const decoder = new TextDecoder('utf-8', { fatal: true })
export const encodeJobFrame = (value: unknown): Uint8Array => encoder.encode(JSON.stringify(value))

/** Parses one request frame: `{ v: 1, request }`. Throws with what is wrong. */
export function decodeJobRequest(frame: Uint8Array): z.output<typeof jobRequestSchema> {
  let value: unknown
  try {
    value = JSON.parse(decoder.decode(frame))
  } catch {
    throw new JobProtocolError('job request is not UTF-8 JSON')
  }
  const envelope = z.object({ v: z.literal(1), request: jobRequestSchema })
  return parseWith(
    envelope,
    value,
    'job request:',
    (message, options) => new JobProtocolError(message, options),
  ).request
}

function decodeReply(frame: Uint8Array): JobReply {
  let value: unknown
  try {
    value = JSON.parse(decoder.decode(frame))
  } catch {
    throw new JobProtocolError('job reply is not UTF-8 JSON')
  }
  return parseWith(
    replySchema,
    value,
    'job reply:',
    (message, options) => new JobProtocolError(message, options),
  )
}

/** What `requestJob` dials with: a MeshNode of `@meshnet/discovery`, or anything that opens streams. */
export interface JobDialer<Peer> {
  dialProtocol(
    peer: Peer,
    protocol: string,
    options: AbortOptions & { timeoutMs?: number; runOnLimitedConnection?: boolean },
  ): Promise<Stream>
}

/**
 * Runs a job on `peer` over `/meshnet/job/1.0.0` and streams its tokens; the generator returns the
 * finished job. Aborting `signal` (or returning early from the generator) closes the stream, which
 * stops the job on the node.
 */
export async function* requestJob<Peer>(
  node: JobDialer<Peer>,
  peer: Peer,
  request: JobRequest,
  options: { signal?: AbortSignal; timeoutMs?: number; runOnLimitedConnection?: boolean } = {},
): AsyncGenerator<JobToken, JobResult, undefined> {
  const checked = jobRequestSchema.parse(request)
  const stream = await node.dialProtocol(peer, JOB_PROTOCOL, {
    timeoutMs: options.timeoutMs ?? 10_000,
    ...(options.signal ? { signal: options.signal } : {}),
    ...(options.runOnLimitedConnection ? { runOnLimitedConnection: true } : {}),
  })
  const onAbort = () => stream.abort(new Error('job cancelled'))
  // Aborted while the stream was being opened: send no request (the listener would never fire).
  if (options.signal?.aborted) {
    onAbort()
    options.signal.throwIfAborted()
  }
  options.signal?.addEventListener('abort', onAbort, { once: true })
  const frames = frameStream(stream, { maxFrameBytes: MAX_JOB_FRAME_BYTES })
  let finished = false
  try {
    await frames.write(encodeJobFrame({ v: 1, request: checked }))
    for (;;) {
      // A token already read in before the abort is not handed out after it.
      options.signal?.throwIfAborted()
      const frame = await frames.read(options.signal ? { signal: options.signal } : {})
      if (frame === undefined) {
        // Our own abort ends the stream too: that is the cancellation, not the node's doing.
        options.signal?.throwIfAborted()
        throw new JobProtocolError('the node closed the job stream before the end')
      }
      const reply = decodeReply(frame)
      if (reply.type === 'token')
        yield {
          id: reply.id,
          text: reply.text,
          index: reply.index,
          ...(reply.textOnly ? { textOnly: true } : {}),
          ...(reply.logprobs === undefined ? {} : { logprobs: reply.logprobs }),
        }
      else if (reply.type === 'end') {
        finished = true
        return reply.result
      } else if (reply.type === 'error') {
        finished = true
        throw new JobFailedError(reply.error.code, reply.error.name, reply.error.message)
      }
    }
  } finally {
    options.signal?.removeEventListener('abort', onAbort)
    if (finished) await stream.close().catch(() => stream.abort(new Error('closed')))
    else stream.abort(new Error('job cancelled'))
  }
}

/** The DHT key under which public nodes announce a model they serve (by file name or SHA-256). */
export async function modelProviderKey(model: string): Promise<CID> {
  return CID.create(1, raw.code, await sha256.digest(encoder.encode(`meshnet:model:${model}`)))
}
