import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Diagnosis } from '@meshnet/discovery'
import {
  type AgentProcess,
  agentRequest,
  beaconPort,
  runMesh,
  startAgentProcess,
} from '@meshnet/test-harness'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { converged, poolOf } from './mesh-fixture.ts'

// `mesh doctor` against real agents on loopback: A and B in one pool (a ring of two), and C alone.
// The tests run in order: the last but one stops B.

let root: string
const agents: AgentProcess[] = []
let dirA: string
let dirC: string
let nodeB: string

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'meshnet-doctor-'))
  const port = beaconPort()
  const args = ['--local-only', '--beacon-port', port, '--beacon-interval', '300']
  const made = await poolOf(root, ['A', 'B'], port, args)
  agents.push(made.admin, await startAgentProcess(made.dir('B'), args))
  dirA = made.dir('A')
  const [ring] = await converged([dirA, made.dir('B')], made.pool.poolId, 2, 60_000)
  const { nodeId: nodeA } = await agentRequest<{ nodeId: string }>(dirA, '/status')
  nodeB = ring!.members.find((m) => m.nodeId !== nodeA)!.nodeId
  dirC = join(root, 'C')
  agents.push(await startAgentProcess(dirC, ['--local-only', '--beacon-port', beaconPort(), '--no-mdns']))
}, 120_000)

afterAll(async () => {
  await Promise.all(agents.map((agent) => agent.stop()))
  await rm(root, { recursive: true, force: true })
})

async function doctor(dataDir: string, json = true): Promise<{ code: number; stdout: string }> {
  return runMesh(['doctor', ...(json ? ['--json'] : []), '--data-dir', dataDir])
}

describe('mesh doctor', () => {
  it('lists the ring member as a LAN link with a round trip, and the NAT type as unknown', async () => {
    const result = await doctor(dirA)
    expect(result.code).toBe(0)
    const report = JSON.parse(result.stdout) as Diagnosis
    expect(report.listen.length).toBeGreaterThan(0)
    expect(new Set(report.listen.map((a) => a.kind))).toEqual(new Set(['loopback']))
    expect(report.peers.find((p) => p.nodeId === nodeB)).toMatchObject({
      link: 'lan',
      member: true,
      error: null,
    })
    expect(report.peers.find((p) => p.nodeId === nodeB)?.rttMs).toBeGreaterThanOrEqual(0)
    expect(report.nat).toMatchObject({ type: 'unknown', autoNAT: null })
    expect(report.nat.evidence).toContain('local-only')
    expect(report.advice.map((a) => a.code)).toEqual(['local-only'])
  })

  it('prints the same for a person: this node, the peers, the next steps', async () => {
    const result = await doctor(dirA, false)
    expect(result.code).toBe(0)
    expect(result.stdout).toMatch(
      /^This node 12D3KooW\w+\n {2}Listen {5}\/ip4\/127\.0\.0\.1\/tcp\/\d+ +loopback\n/,
    )
    expect(result.stdout).toContain('  NAT        unknown: this node keeps to loopback')
    expect(result.stdout).toMatch(
      new RegExp(`\\n {2}${nodeB} \\(member\\) +LAN +\\d+(\\.\\d)? ms +/ip4/127\\.0\\.0\\.1/tcp/\\d+`),
    )
    expect(result.stdout).toContain('Next steps\n  - this node keeps to 127.0.0.1 (--local-only)')
  })

  it('lists a member that went away as not connected, and says so', async () => {
    await agents[1]!.stop()
    const report = JSON.parse((await doctor(dirA)).stdout) as Diagnosis
    expect(report.peers.find((p) => p.nodeId === nodeB)).toMatchObject({
      link: 'none',
      member: true,
      rttMs: null,
      error: 'not connected',
    })
    expect(report.advice.map((a) => a.code)).toEqual(['no-peers', 'members-unreachable', 'local-only'])
  })

  it('tells a node with no peers how members find each other', async () => {
    const report = JSON.parse((await doctor(dirC)).stdout) as Diagnosis
    expect(report.peers).toEqual([])
    expect(report.advice[0]).toMatchObject({ code: 'no-peers', severity: 'warning' })
    expect(report.advice[0]!.message).toContain('--bootstrap')
  })
})
