import { createMeshNode, type MeshNode, type MeshNodeOptions, perfService } from '@meshnet/discovery'
import { generateIdentity } from '@meshnet/identity'
import type { FabstirSDK } from '../src/sdk.ts'

/** Plain mesh nodes and SDKs of one test file on 127.0.0.1, all stopped by `cleanup()`. */
export class Nodes {
  readonly #nodes: MeshNode[] = []
  readonly #sdks: FabstirSDK[] = []

  /** A DHT server on 127.0.0.1 running the perf service, like an agent. */
  async node(options: Partial<MeshNodeOptions> = {}): Promise<MeshNode> {
    const node = await createMeshNode({
      identity: generateIdentity(),
      localOnly: true,
      websockets: false,
      listen: ['/ip4/127.0.0.1/tcp/0'],
      bootstrapDelayMs: 0,
      dhtMode: 'server',
      services: { perf: perfService() },
      ...options,
    })
    this.#nodes.push(node)
    return node
  }

  sdk<T extends FabstirSDK>(sdk: T): T {
    this.#sdks.push(sdk)
    return sdk
  }

  async cleanup(): Promise<void> {
    await Promise.all(this.#sdks.splice(0).map((sdk) => sdk.disconnect()))
    await Promise.all(this.#nodes.splice(0).map((node) => node.stop()))
  }
}
