import type { DatabaseSync } from 'node:sqlite'
import { MeshError } from '@meshnet/core'

/** The database was written by a newer Meshnet. */
export class SchemaTooNewError extends MeshError {
  override name = 'SchemaTooNewError' as const
  constructor(message: string, hint: string) {
    super('ERR_SCHEMA_TOO_NEW', message, { hint })
  }
}

/**
 * Schema migrations, applied in order inside one transaction each. `PRAGMA user_version` records
 * how many have run. Never edit a migration that has shipped; append a new one.
 */
export const MIGRATIONS: readonly string[] = [
  `CREATE TABLE peers (
     peer_id      TEXT PRIMARY KEY,
     addresses    TEXT NOT NULL DEFAULT '[]',
     capabilities TEXT NOT NULL DEFAULT '{}',
     first_seen   INTEGER NOT NULL,
     last_seen    INTEGER NOT NULL
   ) STRICT;
   CREATE TABLE trust (
     peer_id    TEXT PRIMARY KEY,
     score      REAL NOT NULL,
     updated_at INTEGER NOT NULL
   ) STRICT;
   CREATE TABLE trust_events (
     id      INTEGER PRIMARY KEY,
     peer_id TEXT NOT NULL,
     at      INTEGER NOT NULL,
     kind    TEXT NOT NULL,
     delta   REAL NOT NULL,
     score   REAL NOT NULL,
     reason  TEXT NOT NULL DEFAULT ''
   ) STRICT;
   CREATE INDEX trust_events_peer ON trust_events (peer_id, at);
   CREATE TABLE jobs (
     id          TEXT PRIMARY KEY,
     pool_id     TEXT,
     model       TEXT NOT NULL,
     mode        TEXT NOT NULL,
     status      TEXT NOT NULL,
     created_at  INTEGER NOT NULL,
     finished_at INTEGER,
     error       TEXT,
     stats       TEXT NOT NULL DEFAULT '{}'
   ) STRICT;
   CREATE INDEX jobs_created ON jobs (created_at);`,
]

/**
 * Brings `db` to the newest of `migrations` (one transaction each; `PRAGMA user_version` counts
 * those that ran); returns the versions before and after. `name` is used in errors.
 */
export function migrate(
  db: DatabaseSync,
  migrations: readonly string[] = MIGRATIONS,
  name = 'mesh_state.db',
  upgradeHint = 'upgrade Meshnet',
): { from: number; to: number } {
  const from = Number((db.prepare('PRAGMA user_version').get() as { user_version: number }).user_version)
  if (from > migrations.length) {
    throw new SchemaTooNewError(
      `${name} has schema version ${from}, newer than this build knows (${migrations.length})`,
      `${upgradeHint}; the database was left as it is`,
    )
  }
  for (let version = from; version < migrations.length; version++) {
    db.exec('BEGIN IMMEDIATE')
    try {
      db.exec(migrations[version]!)
      db.exec(`PRAGMA user_version = ${version + 1}`)
      db.exec('COMMIT')
    } catch (err) {
      db.exec('ROLLBACK')
      throw err
    }
  }
  return { from, to: migrations.length }
}
