import { mkdtemp, rm, stat } from 'node:fs/promises'
import { createServer, type Server } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { silentLogger } from '@meshnet/core'
import { afterEach, beforeEach, expect, it } from 'vitest'
import { type AgentPart, startAgent } from '../../src/agent/agent.ts'
import type { NodeConfig } from '../../src/config.ts'

let dir: string
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'meshnet-agent-start-'))
})
afterEach(async () => {
  await rm(dir, { recursive: true, force: true })
})

const config: NodeConfig = {
  networkId: 'meshnet',
  name: 'start-test',
  localOnly: true,
  beacons: false,
  mdns: false,
  dht: false,
}

/** A part that opens a listening socket, then (when asked) fails before its start is done. */
function socketPart(
  name: string,
  fail: boolean,
  log: string[],
): AgentPart & { server: () => Server | undefined } {
  let server: Server | undefined
  return {
    name,
    server: () => server,
    async start() {
      server = createServer()
      await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', resolve))
      log.push(`${name} listening`)
      if (fail) throw new Error(`${name}: the pool certificate is corrupt`)
    },
    async stop() {
      log.push(`${name} stopped`)
      await new Promise<void>((resolve) => (server?.listening ? server.close(() => resolve()) : resolve()))
      server = undefined
    },
  }
}

it('stops a part whose start failed half way, and the parts before it, and leaves the data dir free', async () => {
  const log: string[] = []
  const first = socketPart('beacons', false, log)
  const broken = socketPart('mesh', true, log)
  await expect(
    startAgent({ dataDir: dir, config, logger: silentLogger(), parts: () => [first, broken] }),
  ).rejects.toThrow('mesh: the pool certificate is corrupt')
  // The failed part's socket is closed too: nothing keeps the process alive or the port taken.
  expect(log).toEqual(['beacons listening', 'mesh listening', 'mesh stopped', 'beacons stopped'])
  expect(broken.server()).toBeUndefined()
  await expect(stat(join(dir, 'agent.json'))).rejects.toMatchObject({ code: 'ENOENT' })
  // The state database's lock is released: an agent starts on the same data dir.
  const agent = await startAgent({ dataDir: dir, config, logger: silentLogger(), parts: () => [] })
  await agent.stop()
})
