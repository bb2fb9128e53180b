/**
 * @packageDocumentation
 * A node's durable state in `mesh_state.db` (SQLite through `node:sqlite`): known peers, trust scores
 * and the events that moved them, and jobs with their stats. Versioned migrations, an integrity check
 * on open with recovery from corruption, and a lock so that one process at a time holds a data dir.
 */
export type { DataDirLock } from './lock.ts'
export { acquireLock } from './lock.ts'
export { MIGRATIONS, migrate, SchemaTooNewError } from './migrations.ts'
export type { OpenedSqlite, OpenReport, OpenSqliteOptions } from './sqlite.ts'
export { openSqlite } from './sqlite.ts'
export type { JobRecord, JobStatus, OpenStoreOptions, PeerRecord, TrustEvent } from './store.ts'
export { INITIAL_TRUST, MeshStore, openStore } from './store.ts'
