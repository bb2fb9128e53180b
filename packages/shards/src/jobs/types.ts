import type { Logger } from '@meshnet/core'
import type { MeshNode } from '@meshnet/discovery'
import type {
  EmbedOptions,
  GeneratedToken,
  GenerateOptions,
  GenerateResult,
  OpenedTokenizer,
  ShardSpec,
} from '@meshnet/engine'
import type { GrammarSpec } from '@meshnet/grammar'
import type { JobEvent, JobMessage, JobOrigin, JobRunner, JobTool, JobToolCall } from '@meshnet/protocols'
import type { RingMember } from '@meshnet/ring'
import type { ShardGate } from '../peers.ts'
import type { ShardModelFacts } from '../plan.ts'
import type { EmbedRequest, EmbedResult } from './embed.ts'
import type { ForcedToolChoice } from './request.ts'

/** A job as the store keeps it. */
export interface JobRecord {
  id: string
  poolId: string | null
  model: string
  mode: string
  status: 'queued' | 'running' | 'completed' | 'failed' | 'cancelled'
  createdAt: number
  finishedAt: number | null
  error: string | null
  stats: Record<string, unknown>
}

/** Where jobs and trust events are kept: the few MeshStore (`@meshnet/store`) methods jobs use. */
export interface JobStore {
  createJob(job: { id: string; poolId?: string | null; model: string; mode: string }): unknown
  updateJob(
    id: string,
    update: { status?: JobRecord['status']; error?: string | null; stats?: Record<string, unknown> },
  ): unknown
  getJob(id: string): JobRecord | undefined
  listJobs(limit?: number): JobRecord[]
  recordTrustEvent(peerId: string, event: { kind: string; delta: number; reason?: string }): unknown
}

/** The rings this node is in: their live members (with what they hold) and what this node offers. */
export interface JobRings {
  /** Live members of the pool's ring, or undefined when this node has no ring for it. */
  members(poolId: string): readonly RingMember[] | undefined
  /** Every pool this node has a ring for. */
  pools(): string[]
  /** Memory this node offers for shards. */
  capacityBytes(): number
}

/** The model this node serves (`mesh start --model`), as its ring announces it. */
export interface ServedModel {
  path: string
  /** `sha256`: the model id (the SHA-256 of its manifest, or of the whole file when it has none). */
  info: { name: string; sha256: string; bytes: number }
  plan: ShardModelFacts
  /**
   * A model held by parts (fetched from peers or a URL): makes sure the bytes of `spec` are on disk
   * and verified, fetching what is missing, with progress. Absent: `path` is the whole file.
   */
  /** False while a model held by parts lacks some chunks: auto mode then never runs it whole here. */
  whole?: () => boolean
  ensure?: (
    spec: ShardSpec,
    options?: { signal?: AbortSignal; onProgress?: (doneBytes: number, totalBytes: number) => void },
  ) => Promise<void>
}

/** The whole-model engine that runs `single` jobs (llama.cpp: `createLlamaCppEngine` of @meshnet/llama-cpp). */
export interface SingleEngine {
  stream(prompt: readonly number[], options: GenerateOptions): AsyncGenerator<GeneratedToken, GenerateResult>
  /**
   * Pooled, L2-normalized embeddings of token inputs (`InferenceEngine.embed` of @meshnet/engine);
   * absent: embedding jobs run over the ring only.
   */
  embed?(inputs: ReadonlyArray<readonly number[]>, options: EmbedOptions): Promise<Float32Array[]>
  dispose(): Promise<void>
}

export interface JobServiceInit {
  /** The served model; without one the service refuses every job (ERR_NO_MODEL). */
  model: ServedModel | undefined
  /** Kernel and engine threads. */
  threads: number
  /** Run jobs for peers in no pool (`mesh start --public`), at most `publicJobsPerMinute` each. */
  public?: boolean
  publicJobsPerMinute?: number
  /** Announce the model in the DHT (public nodes). Default true. */
  dht?: boolean
  /**
   * Generations the whole-model engine runs at once (default 4): its `parallel` sequences, decoded
   * together; more jobs wait for one to come free.
   */
  parallel?: number
  /** Makes the whole-model engine, once, on the first `single` job. */
  createSingleEngine(modelPath: string, threads: number, parallel: number): Promise<SingleEngine>
  /** Opens the model's tokenizer (`openModelTokenizer` of @meshnet/llama-cpp reads every vocabulary). */
  openTokenizer(modelPath: string): Promise<OpenedTokenizer>
  /**
   * Renders a chat job's `messages` into the prompt with the served model's chat template (with the
   * generation prompt; the agent's is the one its OpenAI API uses). Control-token text in the result
   * is tokenized as those tokens, BOS is added by the tokenizer. Absent: chat jobs are refused
   * (ERR_NO_CHAT_TEMPLATE).
   */
  renderChat?: RenderChat
  /** Tools of chat jobs for the served model (the agent's: its OpenAI API's). Absent: jobs with tools are refused. */
  chatTools?: ChatTools
}

/**
 * What renders a chat job's messages for the served model (`JobServiceInit.renderChat`), with the
 * tools the model is told of (none: the template renders no tools).
 */
export type RenderChat = (
  model: ServedModel,
  messages: readonly JobMessage[],
  tools: readonly JobTool[],
) => string | Promise<string>

/** How the served model's family calls tools (`JobServiceInit.chatTools`). */
export interface ChatTools {
  /** The grammar of one call the model must make (of any of the tools, or the one named). */
  grammar(
    model: ServedModel,
    tools: readonly JobTool[],
    choice: ForcedToolChoice,
  ): GrammarSpec | Promise<GrammarSpec>
  /** A reply's text without its calls (null when calls alone), and the calls. */
  parse(
    model: ServedModel,
    text: string,
  ):
    | { content: string | null; toolCalls: JobToolCall[] }
    | Promise<{ content: string | null; toolCalls: JobToolCall[] }>
}

export interface JobServiceComponents {
  nodeId: string
  node: MeshNode
  gate: ShardGate
  store: JobStore
  rings: JobRings
  logger: Logger
}

/** What `jobService` gives the agent. */
export interface JobService extends JobRunner {
  /**
   * An embedding job: a vector per input text, on this node's whole-model engine when it can hold
   * the model (`auto`), else over the ring as a pipeline (the last member pools). Kept in the store
   * and told to listeners like other jobs (no token events).
   */
  embed(request: EmbedRequest, options: { origin: JobOrigin; signal?: AbortSignal }): Promise<EmbedResult>
  /** Hears every job event of this node's runner; returns the unsubscribe. */
  onEvent(listener: (event: JobEvent) => void): () => void
  start(): Promise<void>
  stop(): Promise<void>
  /** The served model and its tokenizer once started (what the OpenAI API needs). */
  model():
    | { served: ServedModel; facts: ShardModelFacts; tokenizer: OpenedTokenizer['tokenizer'] }
    | undefined
  status(): Record<string, unknown>
  /**
   * Loads this member's shard of the ring's plan ahead of the first job (`layers`, with the
   * embedding when first and the head when last), replacing an earlier preload; `onChange` hears
   * every state change and progress step. Resolves when loaded or failed (never throws).
   */
  preload(shard: ShardAssignment, onChange?: (state: ShardLoadState) => void): Promise<ShardLoadState>
  /** The last preload's state, with its progress; undefined before any. */
  shardState(): ShardLoadState | undefined
}

/** A member's pipeline shard in the ring's plan. */
export interface ShardAssignment {
  layers: readonly [number, number]
  embed: boolean
  head: boolean
}

/** How far a preload went (what ring announcements carry as `capabilities.shard`). */
export interface ShardLoadState {
  layers: [number, number]
  /** `fetching`: its bytes are being fetched (bytes and loadedBytes count the fetch). */
  state: 'fetching' | 'loading' | 'ready' | 'failed'
  /** Weight bytes of the shard (estimated until loaded). */
  bytes: number
  loadedBytes: number
  error?: string
}
