import { mkdtemp, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { DatabaseSync } from 'node:sqlite'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { MIGRATIONS } from '../src/migrations.ts'
import { INITIAL_TRUST, type MeshStore, openStore } from '../src/store.ts'

let dir: string
let store: MeshStore | undefined
let clock = 1_000
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'meshnet-store-'))
  clock = 1_000
})
afterEach(async () => {
  store?.close()
  store = undefined
  await rm(dir, { recursive: true, force: true })
})

const open = () => {
  store = openStore({ dataDir: dir, now: () => clock })
  return store
}

describe('MeshStore', () => {
  it('creates a WAL database at the newest schema', () => {
    const s = open()
    expect(s.report).toEqual({ migratedFrom: 0, schemaVersion: MIGRATIONS.length })
    s.close()
    const db = new DatabaseSync(join(dir, 'mesh_state.db'))
    expect(db.prepare('PRAGMA journal_mode').get()).toEqual({ journal_mode: 'wal' })
    db.close()
    const again = open()
    expect(again.report.migratedFrom).toBe(MIGRATIONS.length)
  })

  it('merges peer addresses and keeps first-seen', () => {
    const s = open()
    s.upsertPeer('p1', { addresses: ['/ip4/127.0.0.1/tcp/1'], capabilities: { memory: 8 } })
    clock = 2_000
    const peer = s.upsertPeer('p1', { addresses: ['/ip4/127.0.0.1/tcp/2'] })
    expect(peer).toEqual({
      peerId: 'p1',
      addresses: ['/ip4/127.0.0.1/tcp/2', '/ip4/127.0.0.1/tcp/1'],
      capabilities: { memory: 8 },
      firstSeen: 1_000,
      lastSeen: 2_000,
    })
    expect(s.getPeer('p1')).toEqual(peer)
    expect(s.listPeers().map((p) => p.peerId)).toEqual(['p1'])
  })

  it('moves trust scores within 0..1 and records each event', () => {
    const s = open()
    expect(s.trustScore('p1')).toBe(INITIAL_TRUST)
    s.recordTrustEvent('p1', { kind: 'shard-completed', delta: 0.1 })
    clock = 2_000
    s.recordTrustEvent('p1', { kind: 'protocol-violation', delta: -5, reason: 'bad frame' })
    expect(s.trustScore('p1')).toBe(0)
    expect(s.trustEvents('p1').map((e) => [e.kind, e.score])).toEqual([
      ['protocol-violation', 0],
      ['shard-completed', 0.6],
    ])
    expect(() => s.recordTrustEvent('p1', { kind: 'x', delta: Number.NaN })).toThrow(RangeError)
  })

  it('tracks jobs from queued to completed with merged stats', () => {
    const s = open()
    s.createJob({ id: 'j1', model: 'm.gguf', mode: 'pipeline' })
    s.updateJob('j1', { status: 'running', stats: { promptTokens: 5 } })
    clock = 5_000
    const done = s.updateJob('j1', { status: 'completed', stats: { generatedTokens: 10 } })
    expect(done).toMatchObject({
      status: 'completed',
      createdAt: 1_000,
      finishedAt: 5_000,
      stats: { promptTokens: 5, generatedTokens: 10 },
    })
    expect(s.listJobs().map((j) => j.id)).toEqual(['j1'])
  })

  it('refuses a second open of the same data dir in this process', () => {
    open()
    expect(() => openStore({ dataDir: dir })).toThrow(expect.objectContaining({ name: 'DataDirInUseError' }))
  })

  it('refuses a database from a newer schema and leaves it as it is', () => {
    open().close()
    const db = new DatabaseSync(join(dir, 'mesh_state.db'))
    db.exec('PRAGMA user_version = 999')
    db.close()
    expect(() => open()).toThrow(expect.objectContaining({ name: 'SchemaTooNewError' }))
    store = undefined
    // The lock was released: a later open (after a fix) is possible.
    const fixed = new DatabaseSync(join(dir, 'mesh_state.db'))
    fixed.exec(`PRAGMA user_version = ${MIGRATIONS.length}`)
    fixed.close()
    expect(open().report.migratedFrom).toBe(MIGRATIONS.length)
  })

  it('leaves only its own files in the data dir after close', async () => {
    open().upsertPeer('p1')
    store?.close()
    store = undefined
    const files = (await readdir(dir)).sort()
    expect(files.filter((f) => f !== 'mesh_state.db-wal' && f !== 'mesh_state.db-shm')).toEqual([
      'mesh_state.db',
    ])
  })
})
