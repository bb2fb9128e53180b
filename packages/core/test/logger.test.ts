import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { createLogger, logLevelFromEnv } from '../src/logger.ts'

let dir: string
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'meshnet-log-'))
})
afterEach(async () => {
  await rm(dir, { recursive: true, force: true })
})

describe('logger', () => {
  it('writes JSON lines to the file and short lines to stderr, each at its level', async () => {
    const lines: string[] = []
    const file = join(dir, 'logs', 'agent.log')
    const logger = createLogger({
      app: 'agent',
      file,
      level: 'debug',
      stderrLevel: 'warn',
      stderr: { write: (chunk) => lines.push(chunk) },
    })
    logger.debug({ peer: 'p1' }, 'dialing')
    logger.warn('slow peer')
    const entries = (await readFile(file, 'utf8'))
      .trim()
      .split('\n')
      .map((line) => JSON.parse(line))
    expect(entries.map((e) => e.msg)).toEqual(['dialing', 'slow peer'])
    expect(entries[0]).toMatchObject({ app: 'agent', peer: 'p1' })
    expect(lines).toHaveLength(1)
    expect(lines[0]).toMatch(/WARN +\[agent\] slow peer/)
  })

  it('reads MESH_LOG and rejects an unknown level by name', () => {
    expect(logLevelFromEnv({ MESH_LOG: 'DEBUG' })).toBe('debug')
    expect(logLevelFromEnv({})).toBe('info')
    expect(() => logLevelFromEnv({ MESH_LOG: 'loud' })).toThrow(/MESH_LOG=loud is not a log level/)
  })
})
