import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createMeshNode, type MeshNode } from '@meshnet/discovery'
import type { KernelFactory, Kernels } from '@meshnet/engine'
import { generateIdentity, type NodeIdentity } from '@meshnet/identity'
import {
  createJoinRequest,
  createPool,
  loadPool,
  openPoolAdmin,
  type PoolAdmin,
  PoolGate,
  saveJoinedPool,
  saveRevocationList,
} from '@meshnet/pool'
import { type ShardServer, shardServer } from '../src/server.ts'

/** A real pool (root key in a temp dir) whose admin certifies test nodes. */
export interface TestPool {
  readonly id: string
  admin: PoolAdmin
  /** A data dir holding this pool's certificate for `identity` (a `member` one unless `role` says). */
  enrol(identity: NodeIdentity, dataDir: string, role?: 'member' | 'client'): Promise<void>
  /** Revokes `nodeId` and puts the new revocation list in `dataDirs` (their gates reload it). */
  revoke(nodeId: string, members: readonly TestMember[]): Promise<void>
}

export interface TestMember {
  identity: NodeIdentity
  dataDir: string
  node: MeshNode
  gate: PoolGate
  server: ShardServer | undefined
  nodeId: string
  addrs: string[]
  /** Drops every connection without a goodbye and stops the node and its services. */
  kill(): Promise<void>
  stop(): Promise<void>
}

/** Temp dirs, pools and nodes of one test file, all removed by `cleanup()`. */
export class TestMesh {
  readonly #dirs: string[] = []
  readonly #members: TestMember[] = []

  async dir(prefix: string): Promise<string> {
    const dir = await mkdtemp(join(tmpdir(), `meshnet-sharded-${prefix}-`))
    this.#dirs.push(dir)
    return dir
  }

  async pool(name: string): Promise<TestPool> {
    const adminDir = await this.dir('admin')
    const adminIdentity = generateIdentity()
    const { pool } = await createPool(adminDir, { name }, adminIdentity)
    const admin = await openPoolAdmin(adminDir, pool.id, adminIdentity)
    const token = await admin.createJoinToken({ singleUse: false })
    const clientToken = await admin.createJoinToken({ singleUse: false, role: 'client' })
    return {
      id: pool.id,
      admin,
      async enrol(identity, dataDir, role = 'member') {
        // The join an agent makes over beacons, without the beacons.
        const { bytes } = createJoinRequest(identity, {
          token: (role === 'client' ? clientToken : token).token,
          deviceName: 'test',
        })
        const decision = await admin.handleJoinRequest(bytes)
        if (decision.outcome !== 'accepted') throw new Error(`join refused: ${decision.outcome}`)
        await saveJoinedPool(dataDir, decision.response)
      },
      async revoke(nodeId, members) {
        const { list } = await admin.revoke({ nodeIds: [nodeId] })
        for (const m of members) {
          await saveRevocationList(await loadPool(m.dataDir, pool.id), list)
          await m.gate.reload()
        }
      },
    }
  }

  /**
   * A libp2p node on 127.0.0.1 with a PoolGate over a data dir holding certificates of `pools`, and
   * a shard server when `kernels` and `models` are given.
   */
  async member(options: {
    pools: TestPool[]
    /** The certificate's role (default member). */
    role?: 'member' | 'client'
    kernels?: Kernels | KernelFactory
    models?: (sha256: string) => string | undefined
    server?: Partial<Parameters<typeof shardServer>[0]>
  }): Promise<TestMember> {
    const identity = generateIdentity()
    const dataDir = await this.dir('node')
    for (const pool of options.pools) await pool.enrol(identity, dataDir, options.role)
    const node = await createMeshNode({
      identity,
      localOnly: true,
      listen: ['/ip4/127.0.0.1/tcp/0'],
      websockets: false,
      dhtMode: 'off',
    })
    const gate = new PoolGate({ node, dataDir })
    await gate.start()
    let server: ShardServer | undefined
    if (options.kernels && options.models) {
      server = shardServer({
        node,
        gate,
        kernels: options.kernels,
        models: options.models,
        ...options.server,
      })
      await server.start()
    }
    let stopped = false
    const member: TestMember = {
      identity,
      dataDir,
      node,
      gate,
      server,
      nodeId: node.nodeId,
      addrs: node.multiaddrs().map(String),
      async kill() {
        if (stopped) return
        stopped = true
        for (const connection of node.libp2p.getConnections()) connection.abort(new Error('killed'))
        await node.stop()
        await server?.stop()
        await gate.stop()
      },
      async stop() {
        if (stopped) return
        stopped = true
        await server?.stop()
        await gate.stop()
        await node.stop()
      },
    }
    this.#members.push(member)
    return member
  }

  async cleanup(): Promise<void> {
    await Promise.all(this.#members.splice(0).map((m) => m.stop()))
    for (const dir of this.#dirs.splice(0)) await rm(dir, { recursive: true, force: true })
  }
}
