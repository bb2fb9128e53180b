import type { Capabilities } from '@meshnet/ring'
import type { JobStatus, OpenReport } from '@meshnet/store'

/**
 * Schema migrations of `control-plane.db`, applied in order, one transaction each;
 * `PRAGMA user_version` counts those that ran. Never edit one that has shipped; append.
 */
export const CONTROL_PLANE_MIGRATIONS: readonly string[] = [
  `CREATE TABLE devices (
     node_id       TEXT PRIMARY KEY,
     name          TEXT NOT NULL,
     addresses     TEXT NOT NULL,
     capabilities  TEXT NOT NULL,
     registered_at INTEGER NOT NULL,
     last_seen     INTEGER NOT NULL
   ) STRICT;
   CREATE TABLE pools (
     pool_id             TEXT PRIMARY KEY,
     root_public_key     TEXT NOT NULL,
     registered_at       INTEGER NOT NULL,
     epoch               INTEGER NOT NULL,
     digest              TEXT NOT NULL,
     updated_at          INTEGER NOT NULL,
     revocations         BLOB,
     revocations_version INTEGER NOT NULL DEFAULT 0
   ) STRICT;
   CREATE TABLE ring_members (
     pool_id    TEXT NOT NULL,
     node_id    TEXT NOT NULL,
     role       TEXT NOT NULL,
     serial     TEXT NOT NULL,
     expires_at INTEGER NOT NULL,
     joined_at  INTEGER NOT NULL,
     PRIMARY KEY (pool_id, node_id)
   ) STRICT;
   CREATE INDEX ring_members_node ON ring_members (node_id);
   CREATE TABLE jobs (
     id            TEXT PRIMARY KEY,
     pool_id       TEXT,
     model         TEXT,
     mode          TEXT NOT NULL,
     prompt        TEXT NOT NULL,
     params        TEXT NOT NULL,
     status        TEXT NOT NULL,
     node_id       TEXT,
     attempts      INTEGER NOT NULL DEFAULT 0,
     token_count   INTEGER NOT NULL DEFAULT 0,
     created_at    INTEGER NOT NULL,
     started_at    INTEGER,
     last_activity INTEGER,
     finished_at   INTEGER,
     error         TEXT,
     stats         TEXT
   ) STRICT;
   CREATE INDEX jobs_queue ON jobs (status, pool_id, created_at);
   CREATE TABLE job_chunks (
     id     INTEGER PRIMARY KEY,
     job_id TEXT NOT NULL,
     tokens TEXT NOT NULL,
     text   TEXT NOT NULL,
     at     INTEGER NOT NULL
   ) STRICT;
   CREATE INDEX job_chunks_job ON job_chunks (job_id, id);`,
]

export interface DeviceRecord {
  nodeId: string
  name: string
  addresses: string[]
  capabilities: Capabilities
  registeredAt: number
  lastSeen: number
}

export interface PoolRecord {
  poolId: string
  /** Base32, as `formatRootPublicKey` prints it. */
  rootPublicKey: string
  registeredAt: number
  epoch: number
  digest: string
  /** When the epoch last changed. */
  updatedAt: number
  /** The newest verified revocation list (its canonical bytes), if any was registered. */
  revocations: Uint8Array | null
  revocationsVersion: number
}

export interface RingMemberRecord {
  poolId: string
  nodeId: string
  role: string
  /** Serial and expiry of the certificate the member joined with. */
  serial: string
  expiresAt: number
  joinedAt: number
}

/** Sampling settings of a job. */
export interface JobParams {
  maxTokens: number
  temperature?: number | undefined
  topK?: number | undefined
  topP?: number | undefined
  seed?: number | undefined
}

export interface JobRecord {
  id: string
  poolId: string | null
  model: string | null
  mode: string
  prompt: string
  params: JobParams
  status: JobStatus
  /** The node running it (or that last ran it). */
  nodeId: string | null
  /** How many times it has been claimed. */
  attempts: number
  tokenCount: number
  createdAt: number
  startedAt: number | null
  /** Claim or last token append: the lease runs from here. */
  lastActivity: number | null
  finishedAt: number | null
  error: string | null
  stats: Record<string, unknown> | null
}

export interface ChunkRecord {
  /** Increases across the whole database; the SSE event id. */
  id: number
  tokens: number[]
  text: string
  at: number
}

/** What happened when the database was opened. */
export type OpenDbReport = OpenReport

type Row = Record<string, unknown>
function json<T>(value: unknown): T {
  return JSON.parse(String(value)) as T
}

export function deviceFromRow(row: Row): DeviceRecord {
  return {
    nodeId: String(row.node_id),
    name: String(row.name),
    addresses: json(row.addresses),
    capabilities: json(row.capabilities),
    registeredAt: Number(row.registered_at),
    lastSeen: Number(row.last_seen),
  }
}

export function poolFromRow(row: Row): PoolRecord {
  return {
    poolId: String(row.pool_id),
    rootPublicKey: String(row.root_public_key),
    registeredAt: Number(row.registered_at),
    epoch: Number(row.epoch),
    digest: String(row.digest),
    updatedAt: Number(row.updated_at),
    revocations: row.revocations === null ? null : (row.revocations as Uint8Array),
    revocationsVersion: Number(row.revocations_version),
  }
}

const orNull = <T>(value: unknown, map: (v: unknown) => T): T | null => (value === null ? null : map(value))

export function jobFromRow(row: Row): JobRecord {
  return {
    id: String(row.id),
    poolId: orNull(row.pool_id, String),
    model: orNull(row.model, String),
    mode: String(row.mode),
    prompt: String(row.prompt),
    params: json(row.params),
    status: String(row.status) as JobStatus,
    nodeId: orNull(row.node_id, String),
    attempts: Number(row.attempts),
    tokenCount: Number(row.token_count),
    createdAt: Number(row.created_at),
    startedAt: orNull(row.started_at, Number),
    lastActivity: orNull(row.last_activity, Number),
    finishedAt: orNull(row.finished_at, Number),
    error: orNull(row.error, String),
    stats: orNull(row.stats, (v) => json<Record<string, unknown>>(v)),
  }
}
