import { access, chmod, mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { dataDirLayout } from '../src/data-dir.ts'
import { loadIdentity, loadNodeIdentity, loadOrCreateIdentity } from '../src/keys.ts'
import { verifySignature } from '../src/signing.ts'

let dir: string
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'meshnet-keys-'))
})
afterEach(async () => {
  await rm(dir, { recursive: true, force: true })
})

describe('identity.key', () => {
  it('is created on first use with mode 0600 and loads to the same node id', async () => {
    const path = join(dir, 'identity.key')
    const first = await loadOrCreateIdentity(path)
    expect(first.created).toBe(true)
    expect((await stat(path)).mode & 0o777).toBe(0o600)
    const second = await loadOrCreateIdentity(path)
    expect(second.created).toBe(false)
    expect(second.identity.nodeId).toBe(first.identity.nodeId)
    expect(second.identity.publicKey).toEqual(first.identity.publicKey)
  })

  it('derives the node id as the libp2p PeerId of the same key', async () => {
    const { identity } = await loadOrCreateIdentity(join(dir, 'identity.key'))
    expect(identity.nodeId).toMatch(/^12D3KooW/)
    expect(peerIdFromPrivateKey(identity.privateKey).toString()).toBe(identity.nodeId)
    expect(identity.privateKey.publicKey.raw).toEqual(identity.publicKey)
  })

  it('signs with the identity key so that others can verify with its public key', async () => {
    const { identity } = await loadOrCreateIdentity(join(dir, 'identity.key'))
    const payload = new TextEncoder().encode('hello')
    const signature = identity.sign('test', payload)
    expect(verifySignature(identity.publicKey, 'test', payload, signature)).toBe(true)
    // libp2p's own verification of a domain-free message is a different message: no cross-use.
    expect(await identity.privateKey.publicKey.verify(payload, signature)).toBe(false)
  })

  it('refuses a corrupt file, names it, and leaves it untouched', async () => {
    const path = join(dir, 'identity.key')
    await writeFile(path, 'not json at all', { mode: 0o600 })
    await expect(loadOrCreateIdentity(path)).rejects.toMatchObject({
      name: 'CorruptFileError',
      message: expect.stringContaining(path),
    })
    expect(await readFile(path, 'utf8')).toBe('not json at all')
  })

  it('catches a damaged seed by its stored public key', async () => {
    const path = join(dir, 'identity.key')
    await loadOrCreateIdentity(path)
    const doc = JSON.parse(await readFile(path, 'utf8'))
    const seed = Buffer.from(doc.seed, 'base64')
    seed[0] = (seed[0] ?? 0) ^ 1
    doc.seed = seed.toString('base64')
    const damaged = JSON.stringify(doc)
    await writeFile(path, damaged)
    await expect(loadIdentity(path)).rejects.toThrow(/public key does not match the seed/)
    expect(await readFile(path, 'utf8')).toBe(damaged)
  })

  it('reports a missing field by name', async () => {
    const path = join(dir, 'identity.key')
    await writeFile(path, JSON.stringify({ version: 1, type: 'ed25519', publicKey: 'AA==', nodeId: 'x' }))
    await expect(loadIdentity(path)).rejects.toThrow(/seed/)
  })

  it('warns when the key file is readable by others', async () => {
    const path = join(dir, 'identity.key')
    await loadOrCreateIdentity(path)
    await chmod(path, 0o644)
    const { warnings } = await loadIdentity(path)
    expect(warnings[0]).toMatch(/readable by other users.*chmod 600/)
  })

  it('two concurrent creators end with one identity', async () => {
    const path = join(dir, 'identity.key')
    const results = await Promise.all([loadOrCreateIdentity(path), loadOrCreateIdentity(path)])
    const stored = await loadIdentity(path)
    for (const result of results) expect(result.identity.nodeId).toBe(stored.identity.nodeId)
    expect(results.filter((r) => r.created)).toHaveLength(1)
  })
})

describe('the identity of a data dir', () => {
  it('is created in a data dir no node has used, and loaded after', async () => {
    const layout = dataDirLayout(dir)
    const first = await loadNodeIdentity(layout)
    expect(first).toMatchObject({ created: true, warnings: [] })
    const second = await loadNodeIdentity(layout)
    expect(second.created).toBe(false)
    expect(second.identity.nodeId).toBe(first.identity.nodeId)
  })

  it.each([
    ['mesh_state.db', async () => writeFile(join(dir, 'mesh_state.db'), '')],
    ['a pool folder', async () => mkdir(join(dir, 'pools', `pool-${'a'.repeat(26)}`), { recursive: true })],
  ])('is not silently replaced when identity.key is lost from a data dir holding %s', async (_, leave) => {
    const layout = dataDirLayout(dir)
    await leave()
    await expect(loadNodeIdentity(layout)).rejects.toMatchObject({
      name: 'IdentityMissingError',
      code: 'ERR_IDENTITY_MISSING',
      message: expect.stringMatching(
        new RegExp(`^identity key ${layout.identityKey} is missing, .*mesh init --new-identity`),
      ),
    })
    await expect(access(layout.identityKey)).rejects.toMatchObject({ code: 'ENOENT' })

    const fresh = await loadNodeIdentity(layout, { allowNew: true })
    expect(fresh.created).toBe(true)
    expect(fresh.warnings).toEqual([expect.stringContaining('join those pools again (mesh pool-join)')])
    expect((await loadNodeIdentity(layout)).identity.nodeId).toBe(fresh.identity.nodeId)
  })
})
