import { type ChildProcess, spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdtemp, open as openFile, readdir, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { loadOrCreateIdentity } from '@meshnet/identity'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { openStore } from '../src/store.ts'

let dir: string
let child: ChildProcess | undefined
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'meshnet-recovery-'))
})
afterEach(async () => {
  if (child && child.exitCode === null) {
    child.kill('SIGKILL')
    await once(child, 'exit')
  }
  child = undefined
  await rm(dir, { recursive: true, force: true })
})

describe('recovery from a corrupt mesh_state.db', () => {
  it('moves a database with overwritten bytes aside, starts fresh, and keeps the identity', async () => {
    const { identity } = await loadOrCreateIdentity(join(dir, 'identity.key'))
    const first = openStore({ dataDir: dir })
    for (let i = 0; i < 200; i++) first.upsertPeer(`peer-${i}`, { addresses: [`/ip4/127.0.0.1/tcp/${i}`] })
    first.close()

    const path = join(dir, 'mesh_state.db')
    const size = (await stat(path)).size
    const handle = await openFile(path, 'r+')
    await handle.write(Buffer.alloc(4096, 0xa5), 0, 4096, Math.floor(size / 2))
    await handle.close()

    const store = openStore({ dataDir: dir })
    try {
      expect(store.report.recoveredFrom?.movedTo).toMatch(/mesh_state\.db\.corrupt-/)
      expect(store.listPeers()).toEqual([])
      store.upsertPeer('fresh')
      expect(store.listPeers().map((p) => p.peerId)).toEqual(['fresh'])
    } finally {
      store.close()
    }
    const files = await readdir(dir)
    expect(files.some((f) => /^mesh_state\.db\.corrupt-[^-]/.test(f))).toBe(true)
    const again = await loadOrCreateIdentity(join(dir, 'identity.key'))
    expect(again.created).toBe(false)
    expect(again.identity.nodeId).toBe(identity.nodeId)
  })

  it('moves aside a file that is not SQLite at all', async () => {
    await writeFile(join(dir, 'mesh_state.db'), 'this is not a database, just text that got here somehow')
    const store = openStore({ dataDir: dir })
    expect(store.report.recoveredFrom?.problem).toMatch(/not an SQLite database/)
    store.close()
  })
})

describe('one process per data dir', () => {
  it('a second process gets "data dir in use by pid N"', async () => {
    const holder = `
      import { openStore } from '@meshnet/store'
      const store = openStore({ dataDir: process.argv[1] })
      process.stdout.write('open\\n')
      process.stdin.on('data', () => { store.close(); process.exit(0) })
    `
    child = spawn(
      process.execPath,
      ['--conditions=meshnet-source', '--input-type=module', '-e', holder, dir],
      {
        cwd: join(import.meta.dirname, '..'),
        stdio: ['pipe', 'pipe', 'inherit'],
      },
    )
    const [chunk] = await once(child.stdout!, 'data')
    expect(String(chunk)).toBe('open\n')
    expect(() => openStore({ dataDir: dir })).toThrow(`data dir ${dir} in use by pid ${child.pid}`)
    child.stdin!.write('close\n')
    await once(child, 'exit')
    openStore({ dataDir: dir }).close()
  })

  it('takes over a lock left by a process that died', async () => {
    child = spawn(process.execPath, ['-e', 'process.exit(0)'])
    await once(child, 'exit')
    await writeFile(join(dir, 'mesh_state.lock'), `${child.pid}\n`)
    openStore({ dataDir: dir }).close()
  })
})

describe('jobs of a process that died', () => {
  it('marks the jobs a killed process left running failed when the data dir is next opened', async () => {
    const runner = `
      import { openStore } from '@meshnet/store'
      const store = openStore({ dataDir: process.argv[1] })
      store.createJob({ id: 'done', model: 'm.gguf', mode: 'single' })
      store.updateJob('done', { status: 'completed' })
      store.createJob({ id: 'cut', model: 'm.gguf', mode: 'pipeline' })
      store.updateJob('cut', { status: 'running', stats: { origin: 'p2p' } })
      process.stdout.write('running\\n')
      setInterval(() => {}, 1_000)
    `
    child = spawn(
      process.execPath,
      ['--conditions=meshnet-source', '--input-type=module', '-e', runner, dir],
      { cwd: join(import.meta.dirname, '..'), stdio: ['ignore', 'pipe', 'inherit'] },
    )
    const [chunk] = await once(child.stdout!, 'data')
    expect(String(chunk)).toBe('running\n')
    child.kill('SIGKILL')
    await once(child, 'exit')
    const { pid } = child
    child = undefined

    const store = openStore({ dataDir: dir })
    try {
      expect(store.getJob('cut')).toMatchObject({
        status: 'failed',
        error: `the agent stopped while it ran (pid ${pid})`,
        finishedAt: expect.any(Number),
        stats: { origin: 'p2p' },
      })
      expect(store.getJob('done')).toMatchObject({ status: 'completed', error: null })
    } finally {
      store.close()
    }
  })
})
