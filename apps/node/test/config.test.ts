import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import {
  type AgentProcess,
  agentRequest,
  beaconPort,
  runMesh,
  startAgentProcess,
} from '@meshnet/test-harness'
import { afterEach, beforeEach, expect, it } from 'vitest'

let dir: string
let agent: AgentProcess | undefined
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'meshnet-config-'))
})
afterEach(async () => {
  await agent?.stop()
  agent = undefined
  await rm(dir, { recursive: true, force: true })
})

it('mesh start takes its settings from --config, with flags winning', async () => {
  const port = beaconPort()
  const file = join(dir, 'agent.yaml')
  await writeFile(file, `localOnly: true\nmdns: false\nbeacon:\n  port: ${port}\n  intervalMs: 700\n`)
  agent = await startAgentProcess(join(dir, 'node'), ['--config', file, '--beacon-interval', '900'])
  const status = await agentRequest<{
    beacons: { endpoint: { port: number; interface: string; ttl: number } }
    libp2p: { addresses: string[] }
  }>(join(dir, 'node'), '/status')
  expect(status.beacons.endpoint).toMatchObject({ port: Number(port), interface: '127.0.0.1', ttl: 0 })
  expect(status.libp2p.addresses.every((a) => a.startsWith('/ip4/127.0.0.1/'))).toBe(true)
})

it('refuses a config file with a bad field, naming the file and the field', async () => {
  const file = join(dir, 'bad.yaml')
  await writeFile(file, 'bootstrap:\n  - not-a-multiaddr\n')
  const result = await runMesh(['start', '--config', file, '--data-dir', join(dir, 'node')])
  expect(result.code).toBe(1)
  expect(result.stderr).toContain(file)
  expect(result.stderr).toContain('bootstrap.0')
})
