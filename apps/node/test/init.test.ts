import { access, mkdtemp, open, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { runMesh } from '@meshnet/test-harness'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'

let dir: string
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'meshnet-cli-'))
})
afterEach(async () => {
  await rm(dir, { recursive: true, force: true })
})

describe('mesh init', () => {
  it('prints the same node id twice, keeps identity.key at mode 0600, and says it kept it', async () => {
    const first = await runMesh([
      'init',
      '--network-id',
      'test',
      '--name',
      'Device1',
      '--data-dir',
      dir,
      '--json',
    ])
    expect(first.code).toBe(0)
    const a = JSON.parse(first.stdout)
    expect(a).toMatchObject({ created: true, networkId: 'test', name: 'Device1', dataDir: dir })
    expect(a.nodeId).toMatch(/^12D3KooW/)
    expect((await stat(join(dir, 'identity.key'))).mode & 0o777).toBe(0o600)

    const second = await runMesh(['--data-dir', dir, 'init'])
    expect(second.code).toBe(0)
    expect(second.stdout).toContain('Kept the existing identity')
    expect(second.stdout).toContain(`Node ID:    ${a.nodeId}`)
    expect(second.stdout).toContain('Network ID: test')
  })

  it('accepts global options anywhere and MESH_DATA_DIR', async () => {
    const viaEnv = await runMesh(['init', '--json'], { MESH_DATA_DIR: dir })
    const viaFlagFirst = await runMesh(['--json', '--data-dir', dir, 'init'])
    expect(JSON.parse(viaEnv.stdout).nodeId).toBe(JSON.parse(viaFlagFirst.stdout).nodeId)
    const files = await readdir(dir)
    expect(files).toEqual(expect.arrayContaining(['identity.key', 'config.yaml', 'mesh_state.db', 'logs']))
  })

  it('stops on a corrupt key file with an error naming it, and overwrites nothing', async () => {
    const key = join(dir, 'identity.key')
    await writeFile(key, '{"version":1,"type":"ed25519"', { mode: 0o600 })
    const result = await runMesh(['init', '--data-dir', dir])
    expect(result.code).toBe(1)
    expect(result.stderr).toContain(`identity key ${key} is corrupt`)
    expect(result.stderr).not.toMatch(/\n\s+at /) // no stack trace without --verbose
    expect(await readFile(key, 'utf8')).toBe('{"version":1,"type":"ed25519"')
    expect((await readdir(dir)).sort()).toEqual(['identity.key', 'logs'])

    const verbose = await runMesh(['init', '--data-dir', dir, '--verbose'])
    expect(verbose.stderr).toMatch(/\n\s+at /)
  })

  it('reports errors as JSON with --json', async () => {
    await writeFile(join(dir, 'identity.key'), 'garbage')
    const result = await runMesh(['init', '--data-dir', dir, '--json'])
    expect(result.code).toBe(1)
    expect(JSON.parse(result.stdout)).toMatchObject({
      error: { name: 'CorruptFileError', code: 'ERR_CORRUPT_FILE' },
    })
  })

  it('recovers from an overwritten mesh_state.db with the same node id', async () => {
    const first = JSON.parse((await runMesh(['init', '--data-dir', dir, '--json'])).stdout)
    const db = join(dir, 'mesh_state.db')
    const handle = await open(db, 'r+')
    await handle.write(Buffer.alloc(100, 0x42), 0, 100, 0)
    await handle.close()
    const second = await runMesh(['init', '--data-dir', dir, '--json'])
    expect(second.code).toBe(0)
    const report = JSON.parse(second.stdout)
    expect(report.nodeId).toBe(first.nodeId)
    expect(report.recoveredDatabase.movedTo).toMatch(/mesh_state\.db\.corrupt-/)
    expect((await readdir(dir)).some((f) => f.startsWith('mesh_state.db.corrupt-'))).toBe(true)
    expect(await readFile(join(dir, 'logs', 'cli.log'), 'utf8')).toContain('mesh_state.db was corrupt')
  })

  it('refuses to become a new node when identity.key is lost, until asked with --new-identity', async () => {
    const first = JSON.parse((await runMesh(['init', '--data-dir', dir, '--json'])).stdout)
    const key = join(dir, 'identity.key')
    await rm(key)
    for (const args of [
      ['start', '--local-only', '--no-beacons'],
      ['pool-create', '--name', 'p'],
      ['init'],
    ]) {
      const refused = await runMesh([...args, '--data-dir', dir])
      expect(refused.code, `mesh ${args[0]}: ${refused.stderr}`).toBe(1)
      expect(refused.stderr).toContain(`identity key ${key} is missing, but this data dir has been used`)
      expect(refused.stderr).toContain('mesh init --new-identity')
    }
    await expect(access(key)).rejects.toMatchObject({ code: 'ENOENT' })

    const renewed = await runMesh(['init', '--new-identity', '--data-dir', dir, '--json'])
    expect(renewed.code, renewed.stderr).toBe(0)
    const second = JSON.parse(renewed.stdout)
    expect(second.created).toBe(true)
    expect(second.nodeId).not.toBe(first.nodeId)
    const again = await runMesh(['init', '--new-identity', '--data-dir', dir])
    expect(again.code).toBe(1)
    expect(again.stderr).toContain(`${key} exists and is never overwritten`)
  })

  it('rejects a bad flag value naming the flag', async () => {
    const result = await runMesh(['init', '--data-dir', dir, '--network-id', 'has space'])
    expect(result.code).toBe(1)
    expect(result.stderr).toContain('--network-id "has space"')
  })
})

describe('mesh', () => {
  it('answers --version and --help', async () => {
    const version = await runMesh(['--version'])
    expect(version.stdout.trim()).toMatch(/^\d+\.\d+\.\d+/)
    const help = await runMesh(['--help'])
    expect(help.code).toBe(0)
    expect(help.stdout).toContain('init')
    expect(help.stdout).toContain('--data-dir')
  })

  it('exits 2 on an unknown option', async () => {
    const result = await runMesh(['init', '--bogus'])
    expect(result.code).toBe(2)
    expect(result.stderr).toContain("unknown option '--bogus'")
  })
})
