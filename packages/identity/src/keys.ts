import { readdir, readFile, stat } from 'node:fs/promises'
import { relative } from 'node:path'
import { privateKeyFromRaw } from '@libp2p/crypto/keys'
import type { Ed25519PrivateKey, PeerId } from '@libp2p/interface'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { CorruptFileError, FileAccessError, MeshError } from '@meshnet/core'
import { z } from 'zod'
import type { DataDirLayout } from './data-dir.ts'
import { writeFileExclusive } from './files.ts'
import { publicKeyOfSeed, randomSeed, signingKey, signWithSeed } from './signing.ts'

/** Version of the `identity.key` format written by this package. */
export const IDENTITY_FILE_VERSION = 1

/**
 * `identity.key` is a small JSON document (mode 0600):
 *
 * ```json
 * { "version": 1, "type": "ed25519", "seed": "<base64, 32 bytes>",
 *   "publicKey": "<base64, 32 bytes>", "nodeId": "12D3KooW..." }
 * ```
 *
 * The seed is the secret. The public key and node id are stored so that a damaged file is caught
 * on load (they must match what the seed derives) rather than silently yielding another identity.
 */
const identityFileSchema = z.strictObject({
  version: z.literal(IDENTITY_FILE_VERSION),
  type: z.literal('ed25519'),
  seed: z.base64(),
  publicKey: z.base64(),
  nodeId: z.string().min(1),
})

/** A node's long-lived identity. The node id is the libp2p PeerId of the same key. */
export interface NodeIdentity {
  /** PeerId string (`12D3KooW...`): the node id everywhere in Meshnet. */
  readonly nodeId: string
  readonly peerId: PeerId
  /** Raw 32-byte Ed25519 public key. */
  readonly publicKey: Uint8Array
  /** The same key in libp2p form, for `createLibp2p({ privateKey })`. */
  readonly privateKey: Ed25519PrivateKey
  /** Signs `payload` under a domain string (see `domainSeparated`). */
  sign(domain: string, payload: Uint8Array): Uint8Array
}

/** Builds an identity from a 32-byte seed. */
export function identityFromSeed(seed: Uint8Array): NodeIdentity {
  if (seed.length !== 32) throw new TypeError(`an Ed25519 seed has 32 bytes, got ${seed.length}`)
  const secret = Uint8Array.from(seed)
  const publicKey = publicKeyOfSeed(secret)
  const raw = new Uint8Array(64)
  raw.set(secret, 0)
  raw.set(publicKey, 32)
  const privateKey = privateKeyFromRaw(raw) as Ed25519PrivateKey
  const peerId = peerIdFromPrivateKey(privateKey)
  const key = signingKey(secret)
  return {
    nodeId: peerId.toString(),
    peerId,
    publicKey,
    privateKey,
    sign: (domain, payload) => signWithSeed(key, domain, payload),
  }
}

/** Creates a new random identity (in memory only). */
export function generateIdentity(): NodeIdentity {
  return identityFromSeed(randomSeed())
}

export interface LoadedIdentity {
  identity: NodeIdentity
  /** True when this call created the key file. */
  created: boolean
  /** Problems that do not stop loading, such as a key file readable by others. */
  warnings: string[]
}

/**
 * Loads the identity at `path`, creating it (mode 0600) when no file exists. An existing file is
 * never replaced: if it cannot be read or parsed this throws and leaves it untouched. For the key
 * of a node's data dir, use {@link loadNodeIdentity}, which does not silently replace a lost one.
 */
export async function loadOrCreateIdentity(path: string): Promise<LoadedIdentity> {
  const existing = await loadIdentityIfPresent(path)
  if (existing !== undefined) return { ...existing, created: false }
  const identity = generateIdentity()
  const written = await writeFileExclusive(path, encodeIdentityFile(identity), {
    mode: 0o600,
  })
  if (!written) {
    // Another process created it between our read and our write: use theirs.
    const raced = await loadIdentityIfPresent(path)
    if (raced !== undefined) return { ...raced, created: false }
  }
  return { identity, created: true, warnings: [] }
}

/**
 * `identity.key` is missing from a data dir that a node has used. Creating a key there would
 * silently make it another node (a new node id), which nobody asked for.
 */
export class IdentityMissingError extends MeshError {
  override name = 'IdentityMissingError' as const
  constructor(path: string, traces: readonly string[]) {
    super(
      'ERR_IDENTITY_MISSING',
      `identity key ${path} is missing, but this data dir has been used by a node (it holds ${traces.join(' and ')})`,
      {
        details: { path, traces },
        hint: 'restore identity.key from a backup to keep the node id; or run `mesh init --new-identity` to go on as a new node, which then joins its pools again (mesh pool-join)',
      },
    )
  }
}

export interface LoadNodeIdentityOptions {
  /** Create a new identity even where the data dir shows an earlier one (`mesh init --new-identity`). */
  allowNew?: boolean
}

/**
 * The identity of the node that owns a data dir: its `identity.key`, created (mode 0600) in a data
 * dir no node has used yet. When the key is missing from a data dir that has been used (it holds
 * mesh_state.db or pool folders), throws IdentityMissingError instead of becoming a new node id,
 * unless `allowNew`. An existing key is never replaced.
 */
export async function loadNodeIdentity(
  layout: DataDirLayout,
  options: LoadNodeIdentityOptions = {},
): Promise<LoadedIdentity> {
  const existing = await loadIdentityIfPresent(layout.identityKey)
  if (existing !== undefined) return { ...existing, created: false }
  const traces = await tracesOfANode(layout)
  if (traces.length > 0 && options.allowNew !== true) {
    throw new IdentityMissingError(layout.identityKey, traces)
  }
  const loaded = await loadOrCreateIdentity(layout.identityKey)
  if (loaded.created && traces.length > 0) {
    loaded.warnings.push(
      `created a new identity ${loaded.identity.nodeId} in a data dir that holds ${traces.join(' and ')} of an earlier one; the pool certificates there are for the old node id: join those pools again (mesh pool-join)`,
    )
  }
  return loaded
}

/** What only a data dir that a node has used holds: the state database and pool folders. */
async function tracesOfANode(layout: DataDirLayout): Promise<string[]> {
  const traces: string[] = []
  if (await exists(layout.stateDb)) traces.push(relative(layout.root, layout.stateDb))
  const pools = (await readdirIfPresent(layout.poolsDir)).filter((name) => name.startsWith('pool-'))
  if (pools.length > 0) {
    traces.push(`${pools.length} pool folder${pools.length === 1 ? '' : 's'} in ${layout.poolsDir}`)
  }
  return traces
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path)
    return true
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false
    throw new FileAccessError(`cannot check ${path}: ${(err as Error).message}`, { cause: err })
  }
}

async function readdirIfPresent(path: string): Promise<string[]> {
  try {
    return await readdir(path)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return []
    throw new FileAccessError(`cannot list ${path}: ${(err as Error).message}`, { cause: err })
  }
}

/** Loads the identity at `path`; throws FileAccessError when it does not exist. */
export async function loadIdentity(path: string): Promise<Omit<LoadedIdentity, 'created'>> {
  const loaded = await loadIdentityIfPresent(path)
  if (loaded === undefined) {
    throw new FileAccessError(`no identity key at ${path}`, { hint: 'run `mesh init` first' })
  }
  return loaded
}

/** libp2p keeps an Ed25519 private key as seed || public key. */
function seedOf(identity: NodeIdentity): Uint8Array {
  return identity.privateKey.raw.subarray(0, 32)
}

async function loadIdentityIfPresent(path: string): Promise<Omit<LoadedIdentity, 'created'> | undefined> {
  let text: string
  try {
    text = await readFile(path, 'utf8')
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'ENOENT') return undefined
    throw new FileAccessError(`cannot read identity key ${path}: ${(err as Error).message}`, {
      cause: err,
      hint: 'check the file permissions; the file was left as it is',
    })
  }
  const identity = decodeIdentityFile(path, text)
  const warnings: string[] = []
  const mode = (await stat(path)).mode & 0o777
  if ((mode & 0o077) !== 0) {
    warnings.push(
      `identity key ${path} is readable by other users (mode ${mode.toString(8)}); run: chmod 600 ${path}`,
    )
  }
  return { identity, warnings }
}

/** Serialises an identity to the `identity.key` format. */
export function encodeIdentityFile(identity: NodeIdentity, seed: Uint8Array = seedOf(identity)): string {
  const doc = {
    version: IDENTITY_FILE_VERSION,
    type: 'ed25519',
    seed: Buffer.from(seed).toString('base64'),
    publicKey: Buffer.from(identity.publicKey).toString('base64'),
    nodeId: identity.nodeId,
  }
  return `${JSON.stringify(doc, null, 2)}\n`
}

/** Parses the `identity.key` format; `path` is used in error messages only. */
export function decodeIdentityFile(path: string, text: string): NodeIdentity {
  const corrupt = (problem: string, cause?: unknown) =>
    new CorruptFileError(`identity key ${path} is corrupt: ${problem}`, {
      cause,
      details: { path },
      hint: 'the file was left untouched; restore it from a backup, or move it away to create a new identity (a new node id)',
    })
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch (err) {
    throw corrupt('not valid JSON', err)
  }
  const parsed = identityFileSchema.safeParse(json)
  if (!parsed.success) {
    const issue = parsed.error.issues[0]
    throw corrupt(`${issue?.path.join('.') || 'document'}: ${issue?.message ?? 'invalid'}`)
  }
  const seed = Buffer.from(parsed.data.seed, 'base64')
  if (seed.length !== 32) throw corrupt(`seed has ${seed.length} bytes, expected 32`)
  const identity = identityFromSeed(seed)
  if (Buffer.from(parsed.data.publicKey, 'base64').compare(identity.publicKey) !== 0) {
    throw corrupt('public key does not match the seed')
  }
  if (parsed.data.nodeId !== identity.nodeId) throw corrupt('node id does not match the seed')
  return identity
}

/** Checks that a value is a NodeIdentity (for option schemas that take one). */
export const nodeIdentitySchema = z.custom<NodeIdentity>(
  (value) =>
    typeof value === 'object' &&
    value !== null &&
    typeof (value as NodeIdentity).nodeId === 'string' &&
    (value as NodeIdentity).privateKey?.type === 'Ed25519',
  { message: 'must be a NodeIdentity from @meshnet/identity (loadOrCreateIdentity or generateIdentity)' },
)
