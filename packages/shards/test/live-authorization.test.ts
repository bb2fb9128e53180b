import { createWasmKernels, type Kernels } from '@meshnet/engine'
import { POOL_CERT_PROTOCOL } from '@meshnet/pool'
import { planPipeline } from '@meshnet/ring'
import { eventually, modelDir } from '@meshnet/test-harness'
import { multiaddr } from '@multiformats/multiaddr'
import { decode, encode } from 'cborg'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { runShardedGeneration } from '../src/coordinator.ts'
import { fileSha256 } from '../src/model-hash.ts'
import { readShardModelFacts, type ShardedPlan, type ShardModelFacts } from '../src/plan.ts'
import { type TestMember, TestMesh, type TestPool } from './mesh.ts'

// Authorization is live: a peer whose certificate is revoked loses what it had open (shard
// sessions, its connection), and a `client` certificate takes no part in a pool's shards. Real
// libp2p nodes on 127.0.0.1 with real pool certificates and revocation lists.

const mesh = new TestMesh()
let models: Awaited<ReturnType<typeof modelDir>>
let path: string
let sha256: string
let facts: ShardModelFacts
let kernels: Kernels
let pool: TestPool

const PROMPT = [1, 20, 57, 300, 4, 99, 250, 3]

beforeAll(async () => {
  models = await modelDir()
  path = await models.model('live-auth', {
    layers: 2,
    embd: 128,
    heads: 4,
    kvHeads: 2,
    ff: 256,
    vocab: 1000,
    type: 'Q8_0',
  })
  sha256 = await fileSha256(path)
  facts = await readShardModelFacts(path)
  kernels = await createWasmKernels({ threads: 1 })
  pool = await mesh.pool('live-auth')
}, 60_000)

afterAll(async () => {
  await mesh.cleanup()
  await kernels?.dispose()
  await models?.cleanup()
})

function member(role?: 'member' | 'client'): Promise<TestMember> {
  return mesh.member({
    pools: [pool],
    kernels,
    models: (sha) => (sha === sha256 ? path : undefined),
    ...(role === undefined ? {} : { role }),
  })
}

function planOn(on: TestMember[]): ShardedPlan {
  const ring = on.map((m) => ({ nodeId: m.nodeId, capacityBytes: 2 ** 30 }))
  return {
    mode: 'pipeline',
    shards: planPipeline(ring, facts).map((s) => ({
      ...s,
      addrs: on.find((m) => m.nodeId === s.nodeId)!.addrs,
    })),
  }
}

describe('live authorization', () => {
  it('a coordinator revoked mid-generation loses its shard session and its connection at once', async () => {
    const holder = await member()
    const coordinator = await mesh.member({ pools: [pool] })
    const gen = runShardedGeneration({
      node: coordinator.node,
      gate: coordinator.gate,
      poolId: pool.id,
      model: { sha256 },
      plan: planOn([holder]),
      promptTokens: PROMPT,
      maxTokens: 200,
    })
    const seen: number[] = []
    let revoked = false
    const run = (async () => {
      for (let step = await gen.next(); !step.done; step = await gen.next()) {
        seen.push(step.value.id)
        if (seen.length === 3 && !revoked) {
          revoked = true
          await pool.revoke(coordinator.nodeId, [holder])
        }
      }
    })()
    const failure = await run.then(
      () => undefined,
      (err: Error) => err,
    )
    expect(failure?.message).toMatch(/stopped mid-generation|revoked|may not use pool/)
    // It stopped right after the revocation, far short of its 200 tokens.
    expect(seen.length).toBeLessThan(20)
    expect(holder.server!.stats().sessions).toBe(0)
    expect(holder.server!.stats().refused.revoked).toBe(1)
    await eventually('the revoked peer to be disconnected', async () =>
      holder.node.libp2p.getConnections().some((c) => c.remotePeer.toString() === coordinator.nodeId)
        ? undefined
        : true,
    )
    // A new session is refused, saying why (not "no certificate presented").
    expect(() => holder.gate.requireMember(coordinator.nodeId, pool.id)).toThrow(/revoked/)
    await coordinator.stop()
    await holder.stop()
  })

  it('a client certificate may not open a shard session, and says it is the role', async () => {
    const holder = await member()
    const client = await mesh.member({ pools: [pool], role: 'client' })
    await client.node.libp2p.dial(multiaddr(holder.addrs[0]!))
    await client.gate.exchange(holder.node.libp2p.peerId)
    const gen = runShardedGeneration({
      node: client.node,
      gate: client.gate,
      poolId: pool.id,
      model: { sha256 },
      plan: planOn([holder]),
      promptTokens: PROMPT,
      maxTokens: 2,
    })
    await expect(gen.next()).rejects.toMatchObject({
      message: expect.stringMatching(/client role, which may not use this \(admin or member only\)/),
    })
    expect(holder.server!.stats().refused['not-a-member']).toBe(1)
    // The same peer passes where a client may come (jobs).
    expect(() =>
      holder.gate.requireMember(client.nodeId, pool.id, ['admin', 'member', 'client']),
    ).not.toThrow()
    await client.stop()
    await holder.stop()
  })

  it('an outsider that asks for certificates gets none; a member gets those of the pools it proved', async () => {
    const target = await mesh.member({ pools: [pool] })
    const outsider = await mesh.member({ pools: [] })
    await outsider.node.libp2p.dial(multiaddr(target.addrs[0]!))
    const ask = async (from: TestMember, certs: Uint8Array[]) => {
      const reply = await from.node.request(
        target.node.libp2p.peerId,
        POOL_CERT_PROTOCOL,
        encode({ v: 1, certs }),
        {
          timeoutMs: 5_000,
          maxResponseBytes: 65536,
        },
      )
      return (decode(reply) as { certs: Uint8Array[] }).certs
    }
    // Presenting nothing (or another pool's certificate) proves nothing: no certificate comes back.
    expect(await ask(outsider, [])).toHaveLength(0)
    const insider = await mesh.member({ pools: [pool] })
    await insider.node.libp2p.dial(multiaddr(target.addrs[0]!))
    expect(await ask(insider, [insider.gate.certificateBytes(pool.id)!])).toHaveLength(1)
    for (const m of [target, outsider, insider]) await m.stop()
  })
})
