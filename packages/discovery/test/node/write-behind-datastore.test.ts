import { mkdtemp, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { FsDatastore } from 'datastore-fs'
import { Key } from 'interface-datastore'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { WriteBehindDatastore } from '../../src/node/write-behind-datastore.ts'

const bytes = (text: string) => new TextEncoder().encode(text)
const text = (data: Uint8Array) => new TextDecoder().decode(data)

/** A disk that refuses writes while `full` is set (as a full disk would). */
class FullableDatastore extends FsDatastore {
  full = false
  override async put(key: Key, value: Uint8Array): Promise<Key> {
    if (this.full) throw Object.assign(new Error('ENOSPC: no space left on device'), { code: 'ENOSPC' })
    return super.put(key, value)
  }
}

describe('WriteBehindDatastore', () => {
  let dir: string
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'meshnet-datastore-'))
  })
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  it('answers from memory at once, writes the disk on flush, and reads it back when reopened', async () => {
    const store = new WriteBehindDatastore(new FsDatastore(dir))
    await store.open()
    await store.put(new Key('/peers/a'), bytes('one'))
    await store.put(new Key('/peers/b'), bytes('two'))
    await store.put(new Key('/peers/a'), bytes('three'))
    expect(text(await store.get(new Key('/peers/a')))).toBe('three')
    expect(await readdir(dir)).toEqual([]) // nothing on disk before the flush
    await store.delete(new Key('/peers/b'))
    await store.close()

    const again = new WriteBehindDatastore(new FsDatastore(dir))
    await again.open()
    expect(text(await again.get(new Key('/peers/a')))).toBe('three')
    expect(await again.has(new Key('/peers/b'))).toBe(false)
    const keys = []
    for await (const key of again.queryKeys({ prefix: '/peers' })) keys.push(key.toString())
    expect(keys).toEqual(['/peers/a'])
    await again.close()
  })

  it('keeps what a full disk refused and writes it once the disk has room again', async () => {
    const disk = new FullableDatastore(dir)
    const warnings: string[] = []
    const log = { warn: (_: unknown, message: string) => warnings.push(message), info: () => {} }
    const store = new WriteBehindDatastore(disk, log as never)
    await store.open()
    disk.full = true
    await store.put(new Key('/peers/a'), bytes('kept'))
    await store.flush()
    await store.flush()
    expect(warnings).toHaveLength(1) // once per run of failures, not once per flush
    expect(warnings[0]).toMatch(/kept in memory/)
    expect(text(await store.get(new Key('/peers/a')))).toBe('kept')

    disk.full = false
    await store.close()
    const again = new WriteBehindDatastore(new FsDatastore(dir))
    await again.open()
    expect(text(await again.get(new Key('/peers/a')))).toBe('kept')
    await again.close()
  })
})
