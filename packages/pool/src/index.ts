/**
 * @packageDocumentation
 * Meshnet pools: the pool root key and pool id, member certificates (with one level of delegation
 * to admins), signed join requests and join tokens, the admin's decisions, signed revocation lists,
 * and each pool's files in the data directory. Every wire object has one canonical encoding
 * (deterministic CBOR), a zod schema, a size cap and a domain-separated Ed25519 signature.
 * No networking: the agent carries these objects over LAN beacons and libp2p.
 */

export type { PoolAdmin } from './admin.ts'
export type {
  CreatedJoinToken,
  JoinDecision,
  JoinQueueDropReason,
  JoinQueueStats,
  JoinTokenInfo,
  OpenPoolAdminOptions,
  PendingJoinRequest,
  SignedJoinResponse,
} from './admin-records.ts'
export {
  DEFAULT_JOIN_TOKEN_TTL_MS,
  JOIN_QUEUE_DROP_REASONS,
  MAX_PENDING_JOIN_REQUESTS,
  MAX_PENDING_JOIN_REQUESTS_PER_SOURCE,
} from './admin-records.ts'
export type { Certificate, PoolRole, PoolSigner, VerifyCertificateOptions } from './certificate.ts'
export {
  certificateSchema,
  DEFAULT_CERTIFICATE_TTL_MS,
  decodeCertificate,
  encodeCertificate,
  POOL_ROLES,
  verifyCertificate,
} from './certificate.ts'
export {
  CLOCK_SKEW_MS,
  formatRootPublicKey,
  isPoolId,
  POOL_LIMITS,
  parseRootPublicKey,
  poolIdFromRootKey,
} from './encoding.ts'
export type {
  CertificateRejectReason,
  JoinRefusalReason,
  JoinRequestRejectReason,
  JoinResponseRejectReason,
  RevocationListRejectReason,
} from './errors.ts'
export {
  CERTIFICATE_REJECT_REASONS,
  CertificateError,
  JOIN_REFUSAL_REASONS,
  JoinRefusedError,
  JoinRequestError,
  JoinResponseError,
  NotPoolAdminError,
  PoolNotFoundError,
  RevocationListError,
} from './errors.ts'
export type { MembershipLost, PoolGateStats } from './gate.ts'
export {
  ANY_ROLE,
  MAX_CERT_EXCHANGE_BYTES,
  MEMBER_ROLES,
  POOL_CERT_PROTOCOL,
  PoolAccessError,
  PoolGate,
} from './gate.ts'
export type {
  CreateJoinRequestOptions,
  DecodeJoinResponseOptions,
  JoinRequest,
  JoinResponse,
  ParsedJoinToken,
} from './join.ts'
export {
  createJoinRequest,
  decodeJoinRequest,
  decodeJoinResponse,
  encodeJoinRequest,
  encodeJoinResponse,
  JOIN_REQUEST_MAX_AGE_MS,
  joinRequestSchema,
  joinResponseSchema,
  parseJoinRequest,
  parseJoinToken,
} from './join.ts'
export { openPoolAdmin } from './open-admin.ts'
export type { ReplayCacheOptions } from './replay-cache.ts'
export { ReplayCache } from './replay-cache.ts'
export type { RevocationList, VerifyRevocationListOptions } from './revocation.ts'
export {
  decodeRevocationList,
  encodeRevocationList,
  revocationListSchema,
  verifyRevocationList,
} from './revocation.ts'
export type { CreatePoolOptions, Pool, PoolMember } from './store.ts'
export {
  createPool,
  hasPoolRootKey,
  listMembers,
  listPools,
  loadCertificate,
  loadPool,
  loadRevocationList,
  POOL_FILES,
  recordMember,
  saveCertificate,
  saveJoinedPool,
  saveRevocationList,
  verifyPoolCertificate,
} from './store.ts'
