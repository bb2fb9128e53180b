import { spawn } from 'node:child_process'
import { mkdtemp, open, readFile, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createMeshNode, type MeshNode } from '@meshnet/discovery'
import { generateIdentity } from '@meshnet/identity'
import { frameStream } from '@meshnet/protocols'
import { eventually, modelDir, type RangeServer, startRangeServer } from '@meshnet/test-harness'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { DirectWeightsListener, receiveDirect } from '../src/direct.ts'
import {
  buildManifest,
  buildUrlManifest,
  ChunkHashError,
  type ChunkSource,
  chunksFor,
  DiskLimitError,
  decodeManifest,
  FetchError,
  fetchChunks,
  fetchHave,
  fetchManifest,
  findModel,
  ManifestError,
  ModelStore,
  peerSource,
  readUrlHeader,
  type StoredModel,
  urlSource,
  WEIGHTS_PROTOCOL,
  WeightsServer,
} from '../src/index.ts'

const CHUNK = 64 * 1024
let models: Awaited<ReturnType<typeof modelDir>>
let path: string
let original: Uint8Array
const dirs: string[] = []
const nodes: MeshNode[] = []

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'meshnet-weights-'))
  dirs.push(dir)
  return dir
}

async function node(): Promise<MeshNode> {
  const n = await createMeshNode({
    identity: generateIdentity(),
    localOnly: true,
    listen: ['/ip4/127.0.0.1/tcp/0'],
    websockets: false,
    dhtMode: 'off',
  })
  nodes.push(n)
  return n
}

/** Bytes of the partial file at each chunk of `indices` equal the original file's. */
async function sameBytes(stored: StoredModel, indices: readonly number[]): Promise<boolean> {
  const handle = await open(stored.path, 'r')
  try {
    for (const i of indices) {
      const at = stored.model.chunks.offset[i]!
      const n = stored.model.chunks.length[i]!
      const got = new Uint8Array(n)
      await handle.read(got, 0, n, at)
      if (Buffer.compare(got, original.subarray(at, at + n)) !== 0) return false
    }
    return true
  } finally {
    await handle.close()
  }
}

beforeAll(async () => {
  models = await modelDir()
  path = await models.model('weights', {
    layers: 6,
    embd: 256,
    heads: 4,
    kvHeads: 2,
    ff: 512,
    vocab: 1000,
    type: 'Q8_0',
  })
  original = new Uint8Array(await readFile(path))
})

afterAll(async () => {
  await Promise.all(nodes.map((n) => n.stop()))
  await models.cleanup()
  for (const dir of dirs) await rm(dir, { recursive: true, force: true })
})

describe('manifests', () => {
  it('cut the header and each tensor into hashed chunks; the id is the hash of the canonical bytes', async () => {
    const model = await buildManifest(path, { chunkBytes: CHUNK })
    expect(model.manifest.fileBytes).toBe(original.length)
    expect(model.manifest.pieces[0]!.name).toBe('<header>')
    expect(model.manifest.pieces.some((p) => p.name === 'blk.5.ffn_down.weight')).toBe(true)
    expect(decodeManifest(model.bytes, model.id).id).toBe(model.id)
    // Same file, same id; another chunk size is another manifest, so another id.
    expect((await buildManifest(path, { chunkBytes: CHUNK })).id).toBe(model.id)
    expect((await buildManifest(path, { chunkBytes: 2 * CHUNK })).id).not.toBe(model.id)
  })

  it('refuse bytes that do not hash to the id, or that are not canonical', async () => {
    const model = await buildManifest(path, { chunkBytes: CHUNK })
    const altered = new TextEncoder().encode(
      new TextDecoder().decode(model.bytes).replace('"chunks":["', '"chunks":["0'),
    )
    expect(() => decodeManifest(altered, model.id)).toThrow(ManifestError)
    const spaced = new TextEncoder().encode(
      JSON.stringify(JSON.parse(new TextDecoder().decode(model.bytes)), null, 1),
    )
    expect(() => decodeManifest(spaced)).toThrow(/canonical/)
  })

  it("pick a shard's pieces: the header, its layers, the embedding when first, the head when last", async () => {
    const model = await buildManifest(path, { chunkBytes: CHUNK })
    const names = (sel: Parameters<typeof chunksFor>[1]) =>
      new Set(chunksFor(model, sel).map((i) => model.manifest.pieces[model.chunks.piece[i]!]!.name))
    const first = names({ layers: [0, 2], embed: true, head: false })
    expect(first.has('<header>')).toBe(true)
    expect(first.has('token_embd.weight')).toBe(true)
    expect(first.has('blk.1.attn_q.weight')).toBe(true)
    expect(first.has('blk.2.attn_q.weight')).toBe(false)
    expect(first.has('output.weight')).toBe(false)
    const last = names({ layers: [4, 6], embed: false, head: true })
    expect(last.has('token_embd.weight')).toBe(false)
    expect(last.has('output.weight')).toBe(true)
    expect(last.has('output_norm.weight')).toBe(true)
    expect(last.has('blk.3.ffn_up.weight')).toBe(false)
  })
})

describe('the model store', () => {
  it('records a whole file once, and a partial model as a sparse file that holds only verified chunks', async () => {
    const store = ModelStore.open(await tempDir())
    const whole = await store.addFile(path, { chunkBytes: CHUNK })
    expect((await store.addFile(path, { chunkBytes: CHUNK })).id).toBe(whole.id)
    const partial = await store.addPartial(whole.model.bytes, { id: whole.id })
    expect(partial.kind).toBe('file') // known already: the whole file is the copy
    store.close()

    const other = ModelStore.open(await tempDir())
    const copy = await other.addPartial(whole.model.bytes, { id: whole.id, name: 'copy.gguf' })
    expect((await stat(copy.path)).size).toBe(original.length)
    const c = copy.model.chunks.count - 1
    const at = copy.model.chunks.offset[c]!
    const bytes = original.slice(at, at + copy.model.chunks.length[c]!)
    const flipped = bytes.slice()
    flipped[0]! ^= 1
    await expect(other.writeChunk(copy, c, flipped)).rejects.toThrow(ChunkHashError)
    expect(other.held(copy.id)[c]).toBe(0)
    await other.writeChunk(copy, c, bytes)
    expect(other.held(copy.id)[c]).toBe(1)
    const [summary] = await other.list()
    expect(summary).toMatchObject({ id: whole.id, kind: 'partial', heldBytes: bytes.length, complete: false })
    expect(await other.readChunk(copy, c)).toEqual(bytes)
    other.close()
    // Another process (a restart) sees what was written.
    const reopened = ModelStore.open(other.dir)
    expect(reopened.held(copy.id)[c]).toBe(1)
    await reopened.remove(copy.id)
    await expect(stat(copy.path)).rejects.toThrow()
    reopened.close()
  })

  it('opens one new store from several processes at once (an agent and mesh commands)', async () => {
    const dir = await tempDir()
    const store = new URL('../src/store.ts', import.meta.url).pathname
    const code = `import { ModelStore } from ${JSON.stringify(store)}; const s = ModelStore.open(${JSON.stringify(dir)}); await s.list(); s.close()`
    const runs = Array.from(
      { length: 6 },
      () =>
        new Promise<{ code: number | null; err: string }>((resolve) => {
          const child = spawn(
            process.execPath,
            ['--conditions=meshnet-source', '--input-type=module', '-e', code],
            {
              stdio: ['ignore', 'ignore', 'pipe'],
            },
          )
          let err = ''
          child.stderr.on('data', (c) => (err += c))
          child.on('exit', (code) => resolve({ code, err }))
        }),
    )
    for (const run of await Promise.all(runs)) expect(run, run.err).toMatchObject({ code: 0 })
  })

  it('refuses a fetch over the --disk limit before writing anything', async () => {
    const whole = await buildManifest(path, { chunkBytes: CHUNK })
    const store = ModelStore.open(await tempDir(), { diskLimitBytes: 100_000 })
    const copy = await store.addPartial(whole.bytes, { id: whole.id })
    await expect(
      fetchChunks(store, copy, chunksFor(copy.model, { layers: [0, 6], embed: true, head: true }), () => []),
    ).rejects.toThrow(DiskLimitError)
    expect((await store.list())[0]!.heldBytes).toBe(0)
    store.close()
  })
})

describe('/meshnet/weights/1.0.0', () => {
  let serverNode: MeshNode
  let badNode: MeshNode
  let clientNode: MeshNode
  let outsider: MeshNode
  let whole: StoredModel
  let servers: WeightsServer[]

  beforeAll(async () => {
    ;[serverNode, badNode, clientNode, outsider] = await Promise.all([node(), node(), node(), node()])
    const members = new Set([clientNode.nodeId, serverNode.nodeId, badNode.nodeId])
    const holder = ModelStore.open(await tempDir())
    whole = await holder.addFile(path, { chunkBytes: CHUNK })
    const badStore = ModelStore.open(await tempDir())
    await badStore.addFile(path, { chunkBytes: CHUNK })
    servers = [
      new WeightsServer({
        node: serverNode,
        store: holder,
        authorize: (id) => members.has(id),
        directHost: '127.0.0.1',
      }),
      // A member that flips a bit of every chunk it sends, over the real protocol.
      new WeightsServer({
        node: badNode,
        store: badStore,
        authorize: (id) => members.has(id),
        readChunk: async (stored, index) => {
          const bytes = await badStore.readChunk(stored, index)
          if (bytes !== undefined) bytes[bytes.length >> 1]! ^= 0x10
          return bytes
        },
      }),
    ]
    for (const s of servers) await s.start()
    for (const n of [serverNode, badNode]) {
      await clientNode.libp2p.dial(n.libp2p.getMultiaddrs())
      await outsider.libp2p.dial(n.libp2p.getMultiaddrs())
    }
  })

  afterAll(async () => {
    for (const s of servers) await s.stop()
  })

  it('fetches only the chunks asked for, each verified, and drops a source that sends bad bytes', async () => {
    const signal = AbortSignal.timeout(30_000)
    const manifest = await fetchManifest(clientNode, serverNode.libp2p.peerId, whole.id, signal)
    const store = ModelStore.open(await tempDir())
    const copy = await store.addPartial(manifest, { id: whole.id })
    const wanted = chunksFor(copy.model, { layers: [0, 3], embed: true, head: false })
    const have = await fetchHave(
      clientNode,
      serverNode.libp2p.peerId,
      whole.id,
      copy.model.chunks.count,
      signal,
    )
    expect(have.every((h) => h === 1)).toBe(true)
    const bad: string[] = []
    const progress = await fetchChunks(
      store,
      copy,
      wanted,
      () => [
        peerSource(clientNode, { id: badNode.nodeId, dial: badNode.libp2p.peerId }, whole.id, have),
        // The good member answers on direct TCP connections.
        peerSource(
          clientNode,
          { id: serverNode.nodeId, dial: serverNode.libp2p.peerId, host: '127.0.0.1' },
          whole.id,
          have,
        ),
      ],
      { batchBytes: 4 * CHUNK, onBadSource: (s, reason) => bad.push(`${s.id}:${reason}`) },
    )
    // The bad member's bytes never reached the disk; the good one supplied every chunk.
    expect(bad).toEqual([`${badNode.nodeId}:bad-bytes`])
    expect(progress.badChunks).toBeGreaterThanOrEqual(1)
    expect(progress.sources[badNode.nodeId]).toBeUndefined()
    expect(store.missing(copy.id, wanted)).toEqual([])
    expect(await sameBytes(copy, wanted)).toBe(true)
    const summary = store.summary(copy)
    expect(summary.completeLayers).toEqual([[0, 3]])
    expect(summary.heldBytes).toBeLessThan(0.7 * original.length)
    expect(servers[0]!.stats().directBytes).toBe(progress.sources[serverNode.nodeId])
    store.close()
  })

  it('falls back to the libp2p stream when the direct address does not answer, and refuses frames sealed with another key', async () => {
    const signal = AbortSignal.timeout(30_000)
    const store = ModelStore.open(await tempDir())
    const copy = await store.addPartial(whole.model.bytes, { id: whole.id })
    const wanted = chunksFor(copy.model, { layers: [5, 6], embed: false, head: true })
    const have = new Uint8Array(copy.model.chunks.count).fill(1)
    const direct = servers[0]!.stats().directAnswers
    // The listener is on 127.0.0.1 only: 127.0.0.2 refuses the connection.
    const source = peerSource(
      clientNode,
      { id: serverNode.nodeId, dial: serverNode.libp2p.peerId, host: '127.0.0.2' },
      whole.id,
      have,
    )
    await fetchChunks(store, copy, wanted, () => [source])
    expect(store.missing(copy.id, wanted)).toEqual([])
    expect(await sameBytes(copy, wanted)).toBe(true)
    expect(servers[0]!.stats().directAnswers).toBeGreaterThan(direct)
    store.close()

    const listener = new DirectWeightsListener('127.0.0.1')
    const offer = await listener.offer(
      [0],
      async () => new Uint8Array(1000).fill(7),
      () => {},
    )
    const forged = { ...offer, key: 'ab'.repeat(32) }
    await expect(async () => {
      for await (const _ of receiveDirect('127.0.0.1', forged, signal)) void _
    }).rejects.toThrow(/authentication tag/)
    // An offer is taken once.
    await expect(async () => {
      for await (const _ of receiveDirect('127.0.0.1', offer, AbortSignal.timeout(2_000))) void _
    }).rejects.toThrow()
    await listener.close()
  })

  it('finds a model by its header hash, and answers members only', async () => {
    const signal = AbortSignal.timeout(30_000)
    const header = original.subarray(0, whole.model.manifest.pieces[0]!.bytes)
    const { createHash } = await import('node:crypto')
    const sha = createHash('sha256').update(header).digest('hex')
    expect(await findModel(clientNode, serverNode.libp2p.peerId, sha, signal)).toBe(whole.id)
    expect(await findModel(clientNode, serverNode.libp2p.peerId, '0'.repeat(64), signal)).toBeUndefined()
    await expect(fetchManifest(outsider, serverNode.libp2p.peerId, whole.id, signal)).rejects.toThrow(
      /pool members only/,
    )
    expect(servers[0]!.stats().drops['not-a-member']).toBeGreaterThanOrEqual(1)
  })

  it('drops an oversized or malformed request, counts it, and goes on serving', async () => {
    const before = servers[0]!.stats().drops['bad-request'] ?? 0
    for (const payload of [
      new Uint8Array(100 * 1024).fill(0x7b),
      new TextEncoder().encode('{"op":"chunks"}'),
    ]) {
      const stream = await clientNode.libp2p.dialProtocol(serverNode.libp2p.peerId, WEIGHTS_PROTOCOL)
      const frames = frameStream(stream, { maxFrameBytes: 1 << 20 })
      await frames.write(payload).catch(() => {})
      // The answer is an error frame or a reset, never data.
      const answer = await frames.read().catch(() => undefined)
      if (answer !== undefined) expect(new TextDecoder().decode(answer)).toMatch(/"error"/)
      stream.abort(new Error('done'))
    }
    await eventually('the drops to be counted', async () =>
      (servers[0]!.stats().drops['bad-request'] ?? 0) >= before + 2 ? true : undefined,
    )
    const signal = AbortSignal.timeout(30_000)
    expect((await fetchManifest(clientNode, serverNode.libp2p.peerId, whole.id, signal)).length).toBe(
      whole.model.bytes.length,
    )
  })
})

describe('models at a URL', () => {
  let http: RangeServer
  beforeAll(async () => {
    http = await startRangeServer(path)
  })
  afterAll(async () => {
    await http.close()
  })

  it('reads the header with range requests, and fetches only the chunks asked for', async () => {
    const header = await readUrlHeader(http.url)
    expect(header.fileBytes).toBe(original.length)
    expect(header.header.tensors.length).toBeGreaterThan(6 * 9)
    const { model } = await buildUrlManifest(http.url, { chunkBytes: CHUNK })
    expect(model.id).toBe((await buildManifest(path, { chunkBytes: CHUNK })).id)

    const store = ModelStore.open(await tempDir())
    const copy = await store.addPartial(model.bytes, { id: model.id, sourceUrl: http.url })
    const wanted = chunksFor(copy.model, { layers: [3, 6], embed: false, head: true })
    const before = http.bytesServed()
    await fetchChunks(store, copy, wanted, () => [urlSource(http.url, copy.model)])
    const wantedBytes = wanted.reduce((n, i) => n + copy.model.chunks.length[i]!, 0)
    expect(http.bytesServed() - before).toBe(wantedBytes)
    expect(await sameBytes(copy, wanted)).toBe(true)
    store.close()
  })

  it('retries a source whose request failed once, and drops it at the third failure', async () => {
    const model = await buildManifest(path, { chunkBytes: CHUNK })
    const store = ModelStore.open(await tempDir())
    const copy = await store.addPartial(model.bytes, { id: model.id })
    const wanted = chunksFor(copy.model, { layers: [0, 2], embed: true, head: false })
    const url = urlSource(http.url, copy.model)
    let failures = 0
    const flaky = (fail: number): ChunkSource => ({
      ...url,
      id: `flaky-${fail}`,
      async *fetch(indices, signal) {
        if (failures++ < fail) throw new Error('connection reset')
        yield* url.fetch(indices, signal)
      },
    })
    const dropped: string[] = []
    await fetchChunks(store, copy, wanted, () => [flaky(1)], {
      onBadSource: (s, reason) => dropped.push(`${s.id}:${reason}`),
    })
    expect(store.missing(copy.id, wanted)).toEqual([])
    expect(dropped).toEqual([])
    store.close()

    const other = ModelStore.open(await tempDir())
    const again = await other.addPartial(model.bytes, { id: model.id })
    failures = 0
    await expect(
      fetchChunks(other, again, wanted, () => [flaky(100)], {
        perSource: 1,
        waitForSourceMs: 200,
        onBadSource: (s, reason) => dropped.push(`${s.id}:${reason}`),
      }),
    ).rejects.toThrow(FetchError)
    expect(dropped).toEqual(['flaky-100:failed'])
    expect(failures).toBe(3)
    other.close()
  })

  it('says when nobody can serve what is missing', async () => {
    const model = await buildManifest(path, { chunkBytes: CHUNK })
    const store = ModelStore.open(await tempDir())
    const copy = await store.addPartial(model.bytes, { id: model.id })
    await expect(fetchChunks(store, copy, [1, 2], () => [], { waitForSourceMs: 300 })).rejects.toThrow(
      FetchError,
    )
    store.close()
  })
})
