import { mkdir, mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { writeFileAtomic, writeFileAtomicSync, writeFileExclusive } from '../src/files.ts'

let dir: string
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'meshnet-files-'))
})
afterEach(async () => {
  await rm(dir, { recursive: true, force: true })
})

describe('file writes', () => {
  it('writeFileAtomic replaces the whole file and leaves no temporary behind', async () => {
    const path = join(dir, 'sub', 'f.json')
    await writeFileAtomic(path, 'one')
    await writeFileAtomic(path, 'two', { mode: 0o600 })
    expect(await readFile(path, 'utf8')).toBe('two')
    expect(await readdir(join(dir, 'sub'))).toEqual(['f.json'])
  })

  it('writeFileAtomicSync replaces the whole file with its mode and leaves no temporary behind', async () => {
    const path = join(dir, 'sub', 'agent.json')
    writeFileAtomicSync(path, 'one', { mode: 0o600 })
    writeFileAtomicSync(path, new TextEncoder().encode('two'), { mode: 0o600 })
    expect(await readFile(path, 'utf8')).toBe('two')
    expect((await stat(path)).mode & 0o777).toBe(0o600)
    expect(await readdir(join(dir, 'sub'))).toEqual(['agent.json'])
  })

  it('writeFileAtomicSync names the file it could not write and leaves no temporary behind', async () => {
    const path = join(dir, 'taken')
    await mkdir(join(path, 'inner'), { recursive: true }) // a directory where the file should go
    expect(() => writeFileAtomicSync(path, 'x')).toThrow(/could not write .*taken/)
    expect(await readdir(dir)).toEqual(['taken'])
  })

  it('writeFileExclusive never overwrites an existing file', async () => {
    const path = join(dir, 'key')
    expect(await writeFileExclusive(path, 'first', { mode: 0o600 })).toBe(true)
    expect(await writeFileExclusive(path, 'second')).toBe(false)
    expect(await readFile(path, 'utf8')).toBe('first')
    expect((await stat(path)).mode & 0o777).toBe(0o600)
    expect(await readdir(dir)).toEqual(['key'])
  })
})
