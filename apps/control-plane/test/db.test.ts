import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { DatabaseSync } from 'node:sqlite'
import { silentLogger } from '@meshnet/core'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { openControlPlaneDb } from '../src/db.ts'
import { CONTROL_PLANE_MIGRATIONS } from '../src/db-schema.ts'
import { controlPlaneFiles } from '../src/layout.ts'

let dir: string
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'meshnet-control-plane-db-'))
})
afterEach(async () => {
  await rm(dir, { recursive: true, force: true })
})

const open = () => {
  const files = controlPlaneFiles(dir)
  return openControlPlaneDb({
    path: files.db,
    lockPath: files.lock,
    dataDir: dir,
    logger: silentLogger(),
    now: () => Date.UTC(2026, 0, 2, 3, 4, 5),
  })
}

const capabilities = { capacityBytes: 1, freeMemoryBytes: 1, computeScore: 1, engines: [], models: [] }

describe('control-plane.db', () => {
  it('creates the schema once and keeps data across opens', () => {
    const first = open()
    expect(first.report).toEqual({ migratedFrom: 0, schemaVersion: CONTROL_PLANE_MIGRATIONS.length })
    first.putDevice({ nodeId: 'n1', name: 'one', addresses: [], capabilities, lastSeen: 5 })
    first.close()
    const second = open()
    expect(second.report.migratedFrom).toBe(CONTROL_PLANE_MIGRATIONS.length)
    expect(second.getDevice('n1')).toMatchObject({ name: 'one', registeredAt: 5 })
    second.close()
  })

  it('holds the data dir: a second open is refused until the first closes', () => {
    const first = open()
    expect(() => open()).toThrow(expect.objectContaining({ name: 'DataDirInUseError' }))
    first.close()
    open().close()
  })

  it('moves a corrupt database aside and starts a fresh one', async () => {
    await writeFile(controlPlaneFiles(dir).db, 'this is not a database at all, not even close')
    const db = open()
    expect(db.report.recoveredFrom).toEqual({
      movedTo: `${controlPlaneFiles(dir).db}.corrupt-2026-01-02T03-04-05-000Z`,
      problem: 'not an SQLite database (bad header)',
    })
    expect(db.listDevices()).toEqual([])
    db.close()
    expect((await readdir(dir)).sort()).toEqual([
      'control-plane.db',
      'control-plane.db.corrupt-2026-01-02T03-04-05-000Z',
    ])
  })

  it('refuses a database from a newer version and leaves it as it is', () => {
    const raw = new DatabaseSync(controlPlaneFiles(dir).db)
    raw.exec(`PRAGMA user_version = ${CONTROL_PLANE_MIGRATIONS.length + 1}`)
    raw.close()
    expect(() => open()).toThrow(expect.objectContaining({ name: 'SchemaTooNewError' }))
    // The lock was released with the refusal.
    expect(() => open()).toThrow(expect.objectContaining({ name: 'SchemaTooNewError' }))
  })
})
