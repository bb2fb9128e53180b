import { mkdir } from 'node:fs/promises'
import { homedir } from 'node:os'
import { isAbsolute, join, resolve } from 'node:path'

/** Environment variable that moves the whole data directory. */
export const DATA_DIR_ENV = 'MESH_DATA_DIR'
/** Default data directory name under the user's home directory. */
export const DEFAULT_DATA_DIR_NAME = '.meshnet'

export interface ResolveDataDirOptions {
  /** Value of `--data-dir`, if given; wins over the environment. */
  dataDir?: string | undefined
  env?: Record<string, string | undefined>
  /** Base for relative paths; default `process.cwd()`. */
  cwd?: string
}

/**
 * Where a node keeps everything: `--data-dir`, else `$MESH_DATA_DIR`, else `~/.meshnet`.
 * Always an absolute path; `~` at the start is expanded.
 */
export function resolveDataDir(options: ResolveDataDirOptions = {}): string {
  const env = options.env ?? process.env
  const chosen =
    nonEmpty(options.dataDir) ?? nonEmpty(env[DATA_DIR_ENV]) ?? join(homedir(), DEFAULT_DATA_DIR_NAME)
  const expanded = chosen === '~' || chosen.startsWith('~/') ? join(homedir(), chosen.slice(1)) : chosen
  return isAbsolute(expanded) ? expanded : resolve(options.cwd ?? process.cwd(), expanded)
}

function nonEmpty(value: string | undefined): string | undefined {
  return value === undefined || value.trim() === '' ? undefined : value
}

/** The files and folders of one data directory. Every path a package writes comes from here. */
export interface DataDirLayout {
  readonly root: string
  /** The node's Ed25519 key; created once, mode 0600, never overwritten. */
  readonly identityKey: string
  /** Node settings written by `mesh init` (network id, name, and agent options). */
  readonly config: string
  /** SQLite state: peers, trust, jobs. */
  readonly stateDb: string
  /** Held while a process has the state database open. */
  readonly lockFile: string
  /** One folder per pool this node belongs to. */
  readonly poolsDir: string
  /** Logs, one file per app (`agent.log`, `relay.log`, ...). */
  readonly logsDir: string
  /** libp2p peer store and other datastore contents. */
  readonly datastoreDir: string
  /** Models written by `mesh model-create` and the demo. */
  readonly modelsDir: string
  /** Token that guards the local control API, mode 0600. */
  readonly controlToken: string
  /** Address and pid of the running agent's control API. */
  readonly agentInfo: string
  poolDir(poolId: string): string
  ringTopology(poolId: string): string
  log(app: string): string
}

export function dataDirLayout(root: string): DataDirLayout {
  return {
    root,
    identityKey: join(root, 'identity.key'),
    config: join(root, 'config.yaml'),
    stateDb: join(root, 'mesh_state.db'),
    lockFile: join(root, 'mesh_state.lock'),
    poolsDir: join(root, 'pools'),
    logsDir: join(root, 'logs'),
    datastoreDir: join(root, 'datastore'),
    modelsDir: join(root, 'models'),
    controlToken: join(root, 'control.token'),
    agentInfo: join(root, 'agent.json'),
    poolDir: (poolId) => join(root, 'pools', poolId),
    ringTopology: (poolId) => join(root, `ring_topology_${poolId}.json`),
    log: (app) => join(root, 'logs', `${app}.log`),
  }
}

/** Creates the data directory (mode 0700) if needed and returns its layout. */
export async function ensureDataDir(root: string): Promise<DataDirLayout> {
  await mkdir(root, { recursive: true, mode: 0o700 })
  return dataDirLayout(root)
}
