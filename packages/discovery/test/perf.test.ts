import { generateIdentity } from '@meshnet/identity'
import { afterAll, expect, it } from 'vitest'
import { createMeshNode, MAX_PERF_BYTES, type MeshNode, type Perf, perfService } from '../src/index.ts'

const nodes: MeshNode[] = []

afterAll(async () => {
  await Promise.all(nodes.map((n) => n.stop()))
})

async function node(): Promise<MeshNode> {
  const n = await createMeshNode({
    identity: generateIdentity(),
    localOnly: true,
    listen: ['/ip4/127.0.0.1/tcp/0'],
    websockets: false,
    dhtMode: 'off',
    services: { perf: perfService() },
  })
  nodes.push(n)
  return n
}

it('measures the largest download a perf server sends, over loopback (the yamux window grows past 4 MiB)', async () => {
  const [a, b] = [await node(), await node()]
  const perf = (a.libp2p.services as unknown as { perf: Perf }).perf
  const result = await perf.measure(b.libp2p.getMultiaddrs(), {
    uploadBytes: 1024,
    downloadBytes: MAX_PERF_BYTES,
    signal: AbortSignal.timeout(60_000),
  })
  expect(result.downloadBytes).toBe(MAX_PERF_BYTES)
  expect(result.downloadBitsPerSecond).toBeGreaterThan(0)
})
