/**
 * @packageDocumentation
 * Every wire contract of Meshnet in one place, so that both ends of a protocol import the same
 * ids, size caps and schemas: length-prefixed framing, protocol ids, the job protocol
 * (`/meshnet/job/1.0.0`), the shard-session frames (`/meshnet/shard/1.0.0`), the pool-ring status
 * (`/meshnet/pool-ring/1.0.0`), DHT keys, and the control plane's REST shapes. Depends on zod and
 * the framing only: no libp2p node, no inference runtime.
 */
export type { Capabilities, DeviceRequest, DeviceSignature } from './control-plane.ts'
export {
  addressesSchema,
  base64Of,
  capabilitiesSchema,
  controlPlaneId,
  DEVICE_REQUEST_DOMAIN,
  DEVICE_SIGNATURE_HEADERS,
  deviceNameSchema,
  deviceRequestPayload,
  deviceSignatureSchema,
  jobIdSchema,
  modelInfoSchema,
  nodeIdSchema,
  POOL_ID_PATTERN,
  poolIdSchema,
} from './control-plane.ts'
export { FrameTooLargeError, ShardSessionError, StreamEndedError } from './errors.ts'
export type { FrameOptions, FrameStream, FrameStreamOptions } from './frames.ts'
export {
  DEFAULT_MAX_FRAME_BYTES,
  frameStream,
  MAX_FRAME_BYTES_LIMIT,
  readFrame,
  writeFrame,
} from './frames.ts'
export { isMeshnetProtocol, MESHNET_DHT_PROTOCOL, meshnetProtocol } from './ids.ts'
export type {
  JobDialer,
  JobEvent,
  JobMessage,
  JobMode,
  JobOrigin,
  JobReply,
  JobRequest,
  JobResult,
  JobRunner,
  JobStats,
  JobToken,
  JobTokenLogprobs,
  JobTool,
  JobToolCall,
} from './jobs.ts'
export {
  decodeJobRequest,
  encodeJobFrame,
  JOB_MODES,
  JOB_PROTOCOL,
  JobFailedError,
  JobProtocolError,
  jobMessageSchema,
  jobRequestSchema,
  jobToolCallSchema,
  jobToolSchema,
  MAX_JOB_FRAME_BYTES,
  MAX_JOB_MESSAGES,
  MAX_JOB_PROMPT_CHARS,
  MAX_JOB_TOKENS,
  MAX_JOB_TOOLS,
  MAX_JOB_TOP_LOGPROBS,
  modelProviderKey,
  requestJob,
} from './jobs.ts'
export type { RingStatus, RingStatusError } from './pool-ring.ts'
export {
  MAX_RING_REQUEST_BYTES,
  MAX_RING_STATUS_BYTES,
  POOL_RING_PROTOCOL,
  poolRendezvousKey,
  ringErrorSchema,
  ringStatusRequestSchema,
  ringStatusSchema,
} from './pool-ring.ts'
export type {
  ActivationType,
  EmbeddingFrame,
  HiddenFrame,
  LinkAccept,
  LinkHello,
  MemberRef,
  OpenMessage,
  OutputFrame,
  ReadyMessage,
  ShardErrorMessage,
  StepFrame,
} from './shard.ts'
export {
  decodeControl,
  decodeEmbedding,
  decodeHidden,
  decodeOutput,
  decodePartial,
  decodeStep,
  embeddingFrameBytes,
  encodeControl,
  encodeEmbedding,
  encodeHidden,
  encodeOutput,
  encodePartial,
  encodeShardError,
  encodeStep,
  hiddenFrameBytes,
  linkAcceptSchema,
  linkHelloSchema,
  linkModeSchema,
  MAX_CONTROL_FRAME_BYTES,
  MAX_DATA_FRAME_BYTES,
  MAX_EMBEDDING_VALUES,
  MAX_SHARD_BATCH,
  memberRefSchema,
  roundTrip,
  SHARD_FRAME,
  SHARD_PROTOCOL,
  sha256Schema,
  shardConnectedSchema,
  shardErrorSchema,
  shardFrameKind,
  shardOpenSchema,
  shardReadySchema,
} from './shard.ts'
