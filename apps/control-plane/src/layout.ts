import { join } from 'node:path'
import { dataDirLayout } from '@meshnet/identity'

/** The control plane's files in a data directory; none of them is shared with the agent. */
export interface ControlPlaneFiles {
  /** SQLite: devices, pools, rings and jobs. */
  db: string
  /** Held while a control plane has the database open. */
  lock: string
  /** Bearer token for the HTTP API; created once (mode 0600) and reused. */
  token: string
  log: string
}

export function controlPlaneFiles(dataDir: string): ControlPlaneFiles {
  return {
    db: join(dataDir, 'control-plane.db'),
    lock: join(dataDir, 'control-plane.lock'),
    token: join(dataDir, 'control-plane.token'),
    log: dataDirLayout(dataDir).log('control-plane'),
  }
}
