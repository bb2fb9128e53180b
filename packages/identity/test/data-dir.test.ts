import { homedir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { dataDirLayout, resolveDataDir } from '../src/data-dir.ts'

describe('resolveDataDir', () => {
  it('prefers --data-dir, then MESH_DATA_DIR, then ~/.meshnet', () => {
    expect(resolveDataDir({ dataDir: '/a', env: { MESH_DATA_DIR: '/b' } })).toBe('/a')
    expect(resolveDataDir({ env: { MESH_DATA_DIR: '/b' } })).toBe('/b')
    expect(resolveDataDir({ env: {} })).toBe(join(homedir(), '.meshnet'))
    expect(resolveDataDir({ dataDir: '  ', env: { MESH_DATA_DIR: '' } })).toBe(join(homedir(), '.meshnet'))
  })

  it('expands ~ and makes relative paths absolute', () => {
    expect(resolveDataDir({ dataDir: '~/x', env: {} })).toBe(join(homedir(), 'x'))
    expect(resolveDataDir({ dataDir: 'rel', env: {}, cwd: '/base' })).toBe('/base/rel')
  })
})

describe('dataDirLayout', () => {
  it('keeps every file under the one root', () => {
    const layout = dataDirLayout('/d')
    const paths = [
      layout.identityKey,
      layout.config,
      layout.stateDb,
      layout.lockFile,
      layout.poolDir('p1'),
      layout.ringTopology('p1'),
      layout.log('agent'),
      layout.controlToken,
    ]
    for (const path of paths) expect(path.startsWith('/d/')).toBe(true)
    expect(layout.ringTopology('p1')).toBe('/d/ring_topology_p1.json')
    expect(layout.log('agent')).toBe('/d/logs/agent.log')
  })
})
