import { mkdir, readdir, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { CorruptFileError, FileAccessError, InvalidArgumentError, type Logger } from '@meshnet/core'
import {
  dataDirLayout,
  type NodeIdentity,
  publicKeyOfSeed,
  randomSeed,
  signWithSeed,
  writeFileAtomic,
  writeFileExclusive,
} from '@meshnet/identity'
import { z } from 'zod'
import {
  type Certificate,
  certificateSchema,
  DEFAULT_CERTIFICATE_TTL_MS,
  encodeCertificate,
  issueCertificate,
  type PoolRole,
  type PoolSigner,
  verifyCertificate,
} from './certificate.ts'
import {
  bytesEqual,
  decodeCanonical,
  isPoolId,
  nameSchema,
  nodeIdSchema,
  POOL_LIMITS,
  poolIdFromRootKey,
  poolIdSchema,
  timestampSchema,
} from './encoding.ts'
import { CertificateError, JoinResponseError, PoolNotFoundError } from './errors.ts'
import { b64, jsonText, parseJsonFile, readIfPresent, unb64, withFileLock } from './files.ts'
import type { JoinResponse } from './join.ts'
import {
  decodeRevocationList,
  encodeRevocationList,
  type RevocationList,
  verifyRevocationList,
} from './revocation.ts'

/** A pool as this node knows it (from `pool.json`). */
export interface Pool {
  readonly id: string
  readonly name: string
  /** Raw 32-byte Ed25519 public key; the pool id is derived from it. */
  readonly rootPublicKey: Uint8Array
  /** When the pool was created, ms since 1970. */
  readonly createdAt: number
  /** `<data-dir>/pools/<pool-id>`. */
  readonly dir: string
}

/** File names inside a pool's folder. */
export const POOL_FILES = Object.freeze({
  /** `{ version, id, name, rootPublicKey (base64), createdAt }`. */
  info: 'pool.json',
  /** The pool root key, mode 0600, only on the node that created the pool. */
  rootKey: 'root.key',
  /** This node's certificate, canonical CBOR. */
  certificate: 'certificate.cbor',
  /** The newest revocation list seen, canonical CBOR. */
  revocations: 'revocations.cbor',
  /** Known members and their certificates. */
  members: 'members.json',
  /** Admin: issued join tokens (public keys only), mode 0600. */
  tokens: 'tokens.json',
  /** Admin: join requests waiting for approval, and denied ones, mode 0600. */
  pending: 'pending.json',
})

const FILE_VERSION = 1
const base64 = z.base64()

const poolInfoFileSchema = z.strictObject({
  version: z.literal(FILE_VERSION),
  id: poolIdSchema,
  name: nameSchema(POOL_LIMITS.poolNameChars),
  rootPublicKey: base64,
  createdAt: timestampSchema,
})

const rootKeyFileSchema = z.strictObject({
  version: z.literal(FILE_VERSION),
  type: z.literal('ed25519'),
  poolId: poolIdSchema,
  seed: base64,
  publicKey: base64,
})

const memberSchema = z.strictObject({
  nodeId: nodeIdSchema,
  deviceName: z.string().max(POOL_LIMITS.deviceNameChars).optional(),
  role: z.enum(['admin', 'member', 'client']),
  serial: z.string(),
  issuedAt: timestampSchema,
  expiresAt: timestampSchema,
  /** Canonical CBOR of the newest certificate, base64. */
  certificate: base64,
})
const membersFileSchema = z.strictObject({ version: z.literal(FILE_VERSION), members: z.array(memberSchema) })

/** A member this node knows, with its newest certificate. */
export interface PoolMember {
  nodeId: string
  deviceName?: string | undefined
  role: PoolRole
  serial: string
  issuedAt: number
  expiresAt: number
  certificate: Certificate
}

export function poolFile(pool: Pick<Pool, 'dir'>, file: keyof typeof POOL_FILES): string {
  return join(pool.dir, POOL_FILES[file])
}

export function poolDirOf(dataDir: string, poolId: string): string {
  if (!isPoolId(poolId)) {
    throw new InvalidArgumentError(`"${poolId}" is not a pool id`, { hint: 'pool ids look like pool-abcd…' })
  }
  return dataDirLayout(dataDir).poolDir(poolId)
}

// ---- pools ------------------------------------------------------------------------------------

export interface CreatePoolOptions {
  name: string
  /** Default: now. */
  now?: number
  /** Lifetime of the creator's admin certificate; default 30 days (renewed by `openPoolAdmin`). */
  certificateTtlMs?: number
}

/**
 * Creates a pool: a new root key (`root.key`, mode 0600), `pool.json`, and an admin certificate
 * for this node's identity, saved as its certificate and recorded as the first member.
 */
export async function createPool(
  dataDir: string,
  options: CreatePoolOptions,
  identity: Pick<NodeIdentity, 'publicKey'>,
): Promise<{ pool: Pool; certificate: Certificate }> {
  const name = nameSchema(POOL_LIMITS.poolNameChars).safeParse(options.name)
  if (!name.success) {
    throw new InvalidArgumentError(
      `pool name "${options.name}" is not usable: ${name.error.issues[0]?.message}`,
      {
        hint: `use 1 to ${POOL_LIMITS.poolNameChars} printable characters`,
      },
    )
  }
  const now = options.now ?? Date.now()
  const seed = randomSeed()
  const rootPublicKey = publicKeyOfSeed(seed)
  const id = poolIdFromRootKey(rootPublicKey)
  const dir = poolDirOf(dataDir, id)
  await mkdir(dataDirLayout(dataDir).poolsDir, { recursive: true, mode: 0o700 })
  await mkdir(dir, { recursive: true, mode: 0o700 })
  const pool: Pool = { id, name: name.data, rootPublicKey, createdAt: now, dir }
  const keyFile = {
    version: FILE_VERSION,
    type: 'ed25519',
    poolId: id,
    seed: b64(seed),
    publicKey: b64(rootPublicKey),
  }
  if (!(await writeFileExclusive(poolFile(pool, 'rootKey'), jsonText(keyFile), { mode: 0o600 }))) {
    throw new FileAccessError(`${poolFile(pool, 'rootKey')} already exists; it was left untouched`)
  }
  await writePoolInfo(pool)
  const signer = rootSigner(seed)
  const certificate = issueCertificate(signer, {
    poolId: id,
    devicePublicKey: identity.publicKey,
    role: 'admin',
    issuedAt: now,
    ttlMs: options.certificateTtlMs ?? DEFAULT_CERTIFICATE_TTL_MS,
  })
  await saveCertificate(pool, certificate, { now })
  await recordMember(pool, certificate, { now })
  return { pool, certificate }
}

async function writePoolInfo(pool: Pool): Promise<void> {
  const info = {
    version: FILE_VERSION,
    id: pool.id,
    name: pool.name,
    rootPublicKey: b64(pool.rootPublicKey),
    createdAt: pool.createdAt,
  }
  await writeFileAtomic(poolFile(pool, 'info'), jsonText(info))
}

/** Loads `pool.json` of one pool. PoolNotFoundError when this node has no such pool. */
export async function loadPool(dataDir: string, poolId: string): Promise<Pool> {
  const dir = poolDirOf(dataDir, poolId)
  const path = join(dir, POOL_FILES.info)
  const data = await readIfPresent(path)
  if (data === undefined) throw new PoolNotFoundError(poolId, dataDir)
  const info = parseJsonFile(path, data.toString('utf8'), poolInfoFileSchema)
  const rootPublicKey = unb64(info.rootPublicKey)
  if (rootPublicKey.length !== 32 || poolIdFromRootKey(rootPublicKey) !== info.id || info.id !== poolId) {
    throw new CorruptFileError(`${path} is corrupt: the root public key does not match pool id ${poolId}`, {
      details: { path },
      hint: 'the file was left as it is; restore it from a backup or rejoin the pool (mesh pool-join)',
    })
  }
  return { id: info.id, name: info.name, rootPublicKey, createdAt: info.createdAt, dir }
}

/** Pool folders whose damage listPools has logged in this process, with the problem it logged. */
const loggedProblems = new Map<string, string>()

/**
 * Every pool in the data directory; a pool whose files are damaged is skipped and reported in
 * `problems`, not fatal. With a `logger`, each damaged pool is also logged, once per process (again
 * when its problem changes), with the file and what is wrong with it.
 */
export async function listPools(
  dataDir: string,
  options: { logger?: Logger } = {},
): Promise<{ pools: Pool[]; problems: Error[] }> {
  let entries: string[]
  try {
    entries = await readdir(dataDirLayout(dataDir).poolsDir)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { pools: [], problems: [] }
    throw new FileAccessError(`cannot list pools in ${dataDir}: ${(err as Error).message}`, { cause: err })
  }
  const pools: Pool[] = []
  const problems: Error[] = []
  for (const entry of entries.filter(isPoolId).sort()) {
    const dir = poolDirOf(dataDir, entry)
    try {
      pools.push(await loadPool(dataDir, entry))
      loggedProblems.delete(dir)
    } catch (err) {
      if ((err as Error).name === 'PoolNotFoundError') continue
      const problem = err as Error
      problems.push(problem)
      if (options.logger !== undefined && loggedProblems.get(dir) !== problem.message) {
        loggedProblems.set(dir, problem.message)
        const path = (problem as { details?: { path?: unknown } }).details?.path ?? dir
        options.logger.warn({ path, err: problem.message }, 'pool skipped: its files cannot be read')
      }
    }
  }
  return { pools, problems }
}

// ---- root key ---------------------------------------------------------------------------------

function rootSigner(seed: Uint8Array): PoolSigner {
  const secret = Uint8Array.from(seed)
  return {
    publicKey: publicKeyOfSeed(secret),
    sign: (domain, payload) => signWithSeed(secret, domain, payload),
  }
}

/** True when this node holds the pool's root key. */
export async function hasPoolRootKey(pool: Pool): Promise<boolean> {
  try {
    await stat(poolFile(pool, 'rootKey'))
    return true
  } catch {
    return false
  }
}

/** The root key as a signer, or undefined on nodes that do not hold it. Checks the key belongs to the pool. */
export async function loadRootSigner(pool: Pool): Promise<PoolSigner | undefined> {
  const path = poolFile(pool, 'rootKey')
  const data = await readIfPresent(path)
  if (data === undefined) return undefined
  const file = parseJsonFile(path, data.toString('utf8'), rootKeyFileSchema)
  const signer = rootSigner(unb64(file.seed))
  if (
    file.poolId !== pool.id ||
    !bytesEqual(signer.publicKey, pool.rootPublicKey) ||
    !bytesEqual(unb64(file.publicKey), pool.rootPublicKey)
  ) {
    throw new CorruptFileError(`${path} is corrupt: it is not the root key of pool ${pool.id}`, {
      details: { path },
      hint: 'the file was left as it is; restore it from a backup',
    })
  }
  return signer
}

/**
 * Verifies a certificate (a peer's, or this node's) against the pool's root key and the newest
 * revocation list stored for it. Throws CertificateError like {@link verifyCertificate}.
 */
export async function verifyPoolCertificate(
  pool: Pool,
  cert: Certificate,
  options: { now?: number | undefined; clockSkewMs?: number } = {},
): Promise<void> {
  verifyCertificate(cert, {
    poolId: pool.id,
    rootPublicKey: pool.rootPublicKey,
    revocations: await loadRevocationList(pool),
    ...options,
  })
}

// ---- this node's certificate --------------------------------------------------------------------

/**
 * This node's certificate for the pool as stored (not re-verified: check it with verifyCertificate).
 * Given this node's `nodeId`, a certificate issued to another node is refused (CertificateError
 * `node-id-mismatch`, naming the file) rather than taken as ours.
 */
export async function loadCertificate(
  pool: Pool,
  options: { nodeId?: string } = {},
): Promise<Certificate | undefined> {
  const path = poolFile(pool, 'certificate')
  const data = await readIfPresent(path)
  if (data === undefined) return undefined
  const decoded = decodeCanonical(new Uint8Array(data), certificateSchema, POOL_LIMITS.certificateBytes)
  if (!decoded.ok) {
    throw new CorruptFileError(`${path} is corrupt: ${decoded.problem}`, {
      details: { path },
      hint: 'rejoin the pool to get a new certificate (mesh pool-join)',
    })
  }
  const certificate = decoded.value
  if (options.nodeId !== undefined && certificate.nodeId !== options.nodeId) {
    throw new CertificateError(
      'node-id-mismatch',
      `${path} is the certificate of node ${certificate.nodeId}, not of this node ${options.nodeId}`,
      {
        details: { path, poolId: pool.id, certificateNodeId: certificate.nodeId, nodeId: options.nodeId },
        hint: 'it was copied from another device, or identity.key was replaced: restore the identity.key this data dir was created with, or move the pool folder away and join the pool again (mesh pool-join)',
      },
    )
  }
  return certificate
}

/**
 * Verifies a certificate against the pool (and its stored revocation list) and saves it as this
 * node's. Throws CertificateError and saves nothing when it does not verify.
 */
export async function saveCertificate(
  pool: Pool,
  cert: Certificate,
  options: { now?: number } = {},
): Promise<void> {
  await verifyPoolCertificate(pool, cert, { now: options.now })
  await writeFileAtomic(poolFile(pool, 'certificate'), encodeCertificate(cert))
}

/**
 * Saves the pool and certificate from an accepted join response (already checked by
 * decodeJoinResponse). Creates the pool folder on first join; on a renewal the stored pool must
 * have the same root key.
 */
export async function saveJoinedPool(
  dataDir: string,
  response: JoinResponse,
  options: { now?: number } = {},
): Promise<Pool> {
  if (response.outcome !== 'accepted') {
    throw new InvalidArgumentError(`a ${response.outcome} join response carries no certificate to save`)
  }
  const dir = poolDirOf(dataDir, response.poolId)
  let pool: Pool
  try {
    pool = await loadPool(dataDir, response.poolId)
    if (!bytesEqual(pool.rootPublicKey, response.rootPublicKey)) {
      throw new JoinResponseError(
        'wrong-pool',
        `join response for ${response.poolId} has a different root key`,
      )
    }
  } catch (err) {
    if ((err as Error).name !== 'PoolNotFoundError') throw err
    await mkdir(dataDirLayout(dataDir).poolsDir, { recursive: true, mode: 0o700 })
    await mkdir(dir, { recursive: true, mode: 0o700 })
    pool = {
      id: response.poolId,
      name: response.poolName,
      rootPublicKey: response.rootPublicKey,
      createdAt: response.poolCreatedAt,
      dir,
    }
    await writePoolInfo(pool)
  }
  await saveCertificate(pool, response.certificate, options)
  await recordMember(pool, response.certificate, options)
  return pool
}

// ---- revocation list --------------------------------------------------------------------------

/** The newest revocation list this node has, verified against the pool root. */
export async function loadRevocationList(pool: Pool): Promise<RevocationList | undefined> {
  const path = poolFile(pool, 'revocations')
  const data = await readIfPresent(path)
  if (data === undefined) return undefined
  try {
    return decodeRevocationList(new Uint8Array(data), { poolId: pool.id, rootPublicKey: pool.rootPublicKey })
  } catch (err) {
    throw new CorruptFileError(`${path} is corrupt: ${(err as Error).message}`, {
      cause: err,
      details: { path },
      hint: 'move it away; the next revocation list from the pool replaces it',
    })
  }
}

/**
 * Keeps `list` when it is newer than the stored one (higher version). Verifies it first (throws
 * RevocationListError). Returns true when it replaced the stored list, false when it was not newer.
 */
export async function saveRevocationList(pool: Pool, list: RevocationList): Promise<boolean> {
  verifyRevocationList(list, { poolId: pool.id, rootPublicKey: pool.rootPublicKey })
  const path = poolFile(pool, 'revocations')
  return withFileLock(path, async () => {
    const current = await loadRevocationList(pool)
    if (current !== undefined && current.version >= list.version) return false
    await writeFileAtomic(path, encodeRevocationList(list))
    return true
  })
}

// ---- members ----------------------------------------------------------------------------------

/** Members this node knows about (on the admin: every device it certified). */
export async function listMembers(pool: Pool): Promise<PoolMember[]> {
  const path = poolFile(pool, 'members')
  const data = await readIfPresent(path)
  if (data === undefined) return []
  const file = parseJsonFile(path, data.toString('utf8'), membersFileSchema)
  return file.members.map((m) => {
    const decoded = decodeCanonical(unb64(m.certificate), certificateSchema, POOL_LIMITS.certificateBytes)
    if (!decoded.ok) throw new CorruptFileError(`${path} is corrupt: member ${m.nodeId}: ${decoded.problem}`)
    return { ...m, certificate: decoded.value }
  })
}

/**
 * Records a member's certificate after verifying it (CertificateError otherwise). A newer
 * certificate (later `issuedAt`) replaces an older one for the same node.
 */
export async function recordMember(
  pool: Pool,
  cert: Certificate,
  options: { now?: number; deviceName?: string } = {},
): Promise<void> {
  await verifyPoolCertificate(pool, cert, { now: options.now })
  const path = poolFile(pool, 'members')
  await withFileLock(path, async () => {
    const members = await listMembers(pool)
    const existing = members.find((m) => m.nodeId === cert.nodeId)
    if (existing !== undefined && existing.issuedAt > cert.issuedAt) return
    const deviceName = options.deviceName ?? existing?.deviceName
    const entry: PoolMember = {
      nodeId: cert.nodeId,
      ...(deviceName === undefined ? {} : { deviceName }),
      role: cert.role,
      serial: cert.serial,
      issuedAt: cert.issuedAt,
      expiresAt: cert.expiresAt,
      certificate: cert,
    }
    const next = [...members.filter((m) => m.nodeId !== cert.nodeId), entry].sort((a, b) =>
      a.nodeId < b.nodeId ? -1 : 1,
    )
    const file = {
      version: FILE_VERSION,
      members: next.map((m) => ({ ...m, certificate: b64(encodeCertificate(m.certificate)) })),
    }
    await writeFileAtomic(path, jsonText(file), { mode: 0o600 })
  })
}
