import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Logger } from '@meshnet/core'
import { dataDirLayout, generateIdentity, publicKeyOfSeed, randomSeed } from '@meshnet/identity'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { poolIdFromRootKey } from '../src/encoding.ts'
import { createRevocationList } from '../src/revocation.ts'
import {
  createPool,
  hasPoolRootKey,
  listMembers,
  listPools,
  loadCertificate,
  loadPool,
  loadRevocationList,
  loadRootSigner,
  saveCertificate,
  saveRevocationList,
  verifyPoolCertificate,
} from '../src/store.ts'
import { certFor, newRoot, T0 } from './fixtures.ts'

let dataDir: string
beforeEach(async () => {
  dataDir = await mkdtemp(join(tmpdir(), 'meshnet-pool-store-'))
})
afterEach(async () => {
  await rm(dataDir, { recursive: true, force: true })
})

describe('pool files', () => {
  it('creates a pool with its root key readable only by the owner, and an admin certificate for this node', async () => {
    const identity = generateIdentity()
    const { pool, certificate } = await createPool(dataDir, { name: 'home lab', now: T0 }, identity)
    expect(pool.dir).toBe(dataDirLayout(dataDir).poolDir(pool.id))
    expect(pool.id).toBe(poolIdFromRootKey(pool.rootPublicKey))
    expect((await readdir(pool.dir)).sort()).toEqual([
      'certificate.cbor',
      'members.json',
      'pool.json',
      'root.key',
    ])
    expect((await stat(join(pool.dir, 'root.key'))).mode & 0o777).toBe(0o600)
    expect((await stat(pool.dir)).mode & 0o777).toBe(0o700)
    const info = JSON.parse(await readFile(join(pool.dir, 'pool.json'), 'utf8'))
    expect(info).toEqual({
      version: 1,
      id: pool.id,
      name: 'home lab',
      rootPublicKey: Buffer.from(pool.rootPublicKey).toString('base64'),
      createdAt: T0,
    })
    expect(certificate).toMatchObject({ role: 'admin', nodeId: identity.nodeId, issuedAt: T0 })
    expect(await loadCertificate(pool)).toEqual(certificate)
    expect(await hasPoolRootKey(pool)).toBe(true)
    expect((await loadRootSigner(pool))?.publicKey).toEqual(pool.rootPublicKey)
    expect((await listMembers(pool)).map((m) => m.nodeId)).toEqual([identity.nodeId])
  })

  it('lists pools, reporting a damaged one instead of failing', async () => {
    const identity = generateIdentity()
    const a = (await createPool(dataDir, { name: 'a', now: T0 }, identity)).pool
    const b = (await createPool(dataDir, { name: 'b', now: T0 }, identity)).pool
    await writeFile(join(b.dir, 'pool.json'), '{ damaged')
    const { pools, problems } = await listPools(dataDir)
    expect(pools.map((p) => p.id)).toEqual([a.id])
    expect(problems).toHaveLength(1)
    expect(problems[0]).toMatchObject({ name: 'CorruptFileError', message: expect.stringContaining(b.dir) })
    expect(await listPools(join(dataDir, 'nowhere'))).toEqual({ pools: [], problems: [] })
  })

  it('names the missing pool and refuses ids that are not pool ids', async () => {
    await expect(loadPool(dataDir, `pool-${'a'.repeat(26)}`)).rejects.toMatchObject({
      name: 'PoolNotFoundError',
    })
    await expect(loadPool(dataDir, '../../etc')).rejects.toMatchObject({ name: 'InvalidArgumentError' })
  })

  it('refuses a pool.json whose root key does not match its id', async () => {
    const { pool } = await createPool(dataDir, { name: 'a', now: T0 }, generateIdentity())
    const info = JSON.parse(await readFile(join(pool.dir, 'pool.json'), 'utf8'))
    info.rootPublicKey = Buffer.from(publicKeyOfSeed(randomSeed())).toString('base64')
    await writeFile(join(pool.dir, 'pool.json'), JSON.stringify(info))
    await expect(loadPool(dataDir, pool.id)).rejects.toMatchObject({ name: 'CorruptFileError' })
  })

  it('saves only certificates that verify against the pool', async () => {
    const { pool } = await createPool(dataDir, { name: 'a', now: T0 }, generateIdentity())
    const foreign = certFor(newRoot(), pool.id)
    const before = await readFile(join(pool.dir, 'certificate.cbor'))
    await expect(saveCertificate(pool, foreign, { now: T0 })).rejects.toMatchObject({
      name: 'CertificateError',
      reason: 'untrusted-issuer',
    })
    expect(await readFile(join(pool.dir, 'certificate.cbor'))).toEqual(before)
  })

  it('keeps the newest revocation list and ignores older or equal versions', async () => {
    const { pool } = await createPool(dataDir, { name: 'a', now: T0 }, generateIdentity())
    const root = (await loadRootSigner(pool))!
    const v2 = createRevocationList(root, { poolId: pool.id, version: 2, serials: ['11'.repeat(16)] })
    const v1 = createRevocationList(root, { poolId: pool.id, version: 1, serials: [] })
    expect(await loadRevocationList(pool)).toBeUndefined()
    expect(await saveRevocationList(pool, v2)).toBe(true)
    expect(await saveRevocationList(pool, v1)).toBe(false)
    expect(await saveRevocationList(pool, v2)).toBe(false)
    expect(await loadRevocationList(pool)).toEqual(v2)
  })

  it("checks a peer's certificate against the pool's stored revocation list", async () => {
    const { pool } = await createPool(dataDir, { name: 'a', now: T0 }, generateIdentity())
    const root = (await loadRootSigner(pool))!
    const peer = certFor(root, pool.id)
    await expect(verifyPoolCertificate(pool, peer, { now: T0 })).resolves.toBeUndefined()
    await saveRevocationList(
      pool,
      createRevocationList(root, { poolId: pool.id, version: 1, serials: [peer.serial] }),
    )
    await expect(verifyPoolCertificate(pool, peer, { now: T0 })).rejects.toMatchObject({
      name: 'CertificateError',
      reason: 'revoked',
    })
  })

  it('refuses a pool name that is empty, too long or has control characters', async () => {
    for (const name of ['', 'x'.repeat(65), 'bad\nname', ' padded ']) {
      await expect(createPool(dataDir, { name }, generateIdentity())).rejects.toMatchObject({
        name: 'InvalidArgumentError',
      })
    }
    expect(await listPools(dataDir)).toEqual({ pools: [], problems: [] })
  })

  it('logs a damaged pool.json once, with its path and the parse error', async () => {
    const { pool } = await createPool(dataDir, { name: 'a', now: T0 }, generateIdentity())
    await writeFile(join(pool.dir, 'pool.json'), '{ damaged')
    const lines: Array<{ fields: Record<string, unknown>; message: string }> = []
    const logger = {
      warn: (fields: Record<string, unknown>, message: string) => lines.push({ fields, message }),
    } as unknown as Logger
    expect((await listPools(dataDir, { logger })).pools).toEqual([])
    expect((await listPools(dataDir, { logger })).problems).toHaveLength(1)
    expect(lines).toEqual([
      {
        fields: {
          path: join(pool.dir, 'pool.json'),
          err: expect.stringMatching(/pool\.json is corrupt: not valid JSON \(.*JSON.*\)/),
        },
        message: 'pool skipped: its files cannot be read',
      },
    ])
  })

  it('refuses a certificate issued to another node as ours, naming the file', async () => {
    const ours = generateIdentity()
    const { pool, certificate } = await createPool(dataDir, { name: 'a', now: T0 }, ours)
    expect(await loadCertificate(pool, { nodeId: ours.nodeId })).toEqual(certificate)
    const other = generateIdentity()
    await expect(loadCertificate(pool, { nodeId: other.nodeId })).rejects.toMatchObject({
      name: 'CertificateError',
      reason: 'node-id-mismatch',
      message: expect.stringContaining(
        `${join(pool.dir, 'certificate.cbor')} is the certificate of node ${ours.nodeId}, not of this node ${other.nodeId}`,
      ),
    })
  })
})
