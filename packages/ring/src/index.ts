/**
 * @packageDocumentation
 * The ring of a Meshnet pool: members gossip signed announcements (certificate, capabilities, the
 * view they hold) on a per-pool gossipsub topic; every live member converges on one epoch and
 * membership digest; a deterministic shard plan splits a model by layers (pipeline) or by heads and
 * FFN columns (tensor parallel); the agreed ring is written to `ring_topology_<pool-id>.json`.
 */
export type {
  Announcement,
  AnnouncementDropReason,
  Beat,
  Capabilities,
  DecodeAnnouncementOptions,
  FullAnnouncement,
  Obituary,
} from './announcement.ts'
export {
  ANNOUNCEMENT_DOMAIN,
  AnnouncementError,
  decodeAnnouncement,
  encodeAnnouncement,
  MAX_ANNOUNCEMENT_BYTES,
} from './announcement.ts'
export type {
  RingClock,
  RingGossipComponents,
  RingGossipInit,
  RingGossipStats,
  RingPubsub,
  RingSync,
  RingViewEvent,
} from './gossip.ts'
export { RingGossip, ringGossip, ringTopic } from './gossip.ts'
export type { ApplyResult, MembershipInit, RingMember, RingView } from './membership.ts'
export { RingMembership } from './membership.ts'
export type { PipelineShard, PlanMember, PlanModel, Range, TensorShard } from './plan.ts'
export { apportion, planPipeline, planTensor, ShardPlanError } from './plan.ts'
export { ringPubsub } from './pubsub.ts'
export type { SyncRequest } from './sync.ts'
export { decodeSyncRequest, MAX_RING_SYNC_BYTES, RING_SYNC_PROTOCOL } from './sync.ts'
export type { RingTopology } from './topology.ts'
export { readTopologyFile, topologyOf, writeTopologyFile } from './topology.ts'
