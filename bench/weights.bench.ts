// Fetching a model's weights on loopback: the same bytes (a generated Q8_0 llama of 1.17 GB, the
// TinyLlama shape, tiled fill, cached) moved from server processes to this process, which writes
// them to a file on the same disk. Every server is its own child process (forked from this file),
// so the client's event loop is shared with none of them. Measured in the same run:
//
//   - the limit: a plain TCP copy (a server process pipes the file into a socket; the client pipes
//     the socket into a file), and `curl` of the file from a local HTTP range server (the test
//     harness's startRangeServer, in a child; skipped with a line when curl is missing);
//   - @meshnet/weights over `/meshnet/weights/1.0.0` from 1, 2 and 3 pool members, each holding the
//     whole file in a ModelStore (`addFile`) behind a WeightsServer on its own libp2p node: the
//     client fetches the manifest, `addPartial`, asks each member what it holds (`fetchHave`) and
//     `fetchChunks` every chunk with a `peerSource` per member, the bulk bytes on direct TCP
//     connections (AES-256-GCM, keys sent over the noise stream) as the agent asks for them; 4 MiB
//     chunks (the default), and one run with a 16 MiB-chunk manifest;
//   - @meshnet/weights from the HTTP range server (`urlSource`), against curl;
//   - the options a caller has (`perSource: 2`, `batchBytes: 16 MiB`; the defaults are 4 and 64 MiB),
//     from one member, and the libp2p stream alone (no direct connection);
//   - where the time goes: libp2p alone (zeros over one stream: noise + yamux, no disk, no hash), the
//     weights protocol alone (`peerSource.fetch`, the bytes dropped: no hash, no write), reading
//     and hashing the chunks here (no network), and the CPU of the client and of the servers (as a
//     share of a core, and client CPU seconds per GB moved).
//
// One untimed TCP copy warms up first; then every configuration runs once per round, for
// BENCH_WEIGHTS_REPEAT rounds, and each figure is its best round (a slow spell of a shared machine
// falls on all of them alike). Every fetched copy is deleted after its run, nothing else. MB is
// 10^6 bytes. Bar (PASS/MISS, never an exit code): the weights protocol from one member ≥ 0.7× the
// plain TCP copy.
//
//   pnpm bench weights
//   BENCH_WEIGHTS_SHAPE=quick   a 4-layer, embd 1024 model instead (118 MB), to iterate
//   BENCH_WEIGHTS_REPEAT=2      rounds
//   MESHNET_BENCH_CACHE=dir     where the model and its manifests are kept (default $TMPDIR/meshnet-bench-cache)

import { type ChildProcess, fork, spawn, spawnSync } from 'node:child_process'
import { createReadStream, createWriteStream } from 'node:fs'
import { mkdir, mkdtemp, open, rename, rm, stat } from 'node:fs/promises'
import { type AddressInfo, connect, createServer } from 'node:net'
import { availableParallelism, loadavg, tmpdir } from 'node:os'
import { join } from 'node:path'
import { createMeshNode } from '@meshnet/discovery'
import { generateModel } from '@meshnet/gguf'
import { identityFromSeed, randomSeed } from '@meshnet/identity'
import { startRangeServer } from '@meshnet/test-harness'
import {
  type ChunkSource,
  DEFAULT_CHUNK_BYTES,
  decodeManifest,
  type FetchOptions,
  fetchChunks,
  fetchHave,
  fetchManifest,
  ModelStore,
  peerSource,
  sha256Hex,
  urlSource,
  WeightsServer,
} from '@meshnet/weights'
import { table } from './lib.ts'

const SHAPES = {
  full: { layers: 22, embd: 2048, heads: 32, kvHeads: 4, ff: 5632, vocab: 32000, context: 2048 },
  quick: { layers: 4, embd: 1024, heads: 16, kvHeads: 4, ff: 2816, vocab: 32000, context: 2048 },
} as const
const SHAPE_NAME = process.env.BENCH_WEIGHTS_SHAPE === 'quick' ? 'quick' : 'full'
const SHAPE = SHAPES[SHAPE_NAME]
const TYPE = 'Q8_0'
const SEED = 0
const REPEAT = Number(process.env.BENCH_WEIGHTS_REPEAT ?? 2)
if (!Number.isInteger(REPEAT) || REPEAT < 1) {
  throw new Error(
    `BENCH_WEIGHTS_REPEAT=${process.env.BENCH_WEIGHTS_REPEAT}: expected a positive whole number`,
  )
}
const BAR = 0.7
const BIG_CHUNK_BYTES = 16 * 2 ** 20
const SOURCES = 3
const RUN_TIMEOUT_MS = 120_000
/**
 * The bench's own protocol for libp2p alone. Not `/perf/1.0.0`: its reader caps its buffer at 4 MiB,
 * under a grown yamux window, and a fast download overflows it.
 */
const BLAST_PROTOCOL = '/meshnet-bench/blast/1.0.0'

const cacheDir = process.env.MESHNET_BENCH_CACHE ?? join(tmpdir(), 'meshnet-bench-cache')
const s = SHAPE
const modelPath = join(
  cacheDir,
  `weights-l${s.layers}-e${s.embd}-h${s.heads}-kv${s.kvHeads}-ff${s.ff}-v${s.vocab}-${TYPE}-tiled-s${SEED}.gguf`,
)
/** A ModelStore per chunk size holding the model as a whole file, so its manifest is built once. */
const storeDirOf = (chunkBytes: number) => `${modelPath}.store-${chunkBytes / 2 ** 20}m`

/** What a child process serves: the file over TCP, over HTTP, or over the weights protocol. */
type Role =
  | { kind: 'tcp' }
  | { kind: 'http' }
  | { kind: 'weights'; seed: string; chunkBytes: number; client: string; blastBytes: number }

interface Child {
  process: ChildProcess
  info: { port?: number; url?: string; addrs?: string[] }
}

const role = process.env.BENCH_WEIGHTS_ROLE
if (role === undefined) await main()
else await serve(JSON.parse(role) as Role)

async function main(): Promise<void> {
  const log = (line: string) => console.log(`${new Date().toISOString().slice(11, 19)} ${line}`)

  await mkdir(cacheDir, { recursive: true })
  if ((await stat(modelPath).catch(() => undefined)) === undefined) {
    log(`writing ${modelPath} (tiled fill)`)
    const started = performance.now()
    const partial = `${modelPath}.${process.pid}.partial`
    await generateModel({ out: partial, ...SHAPE, type: TYPE, seed: SEED, fill: 'tiled' })
    await rename(partial, modelPath)
    log(`wrote it in ${((performance.now() - started) / 1000).toFixed(1)} s`)
  }
  const fileBytes = (await stat(modelPath)).size
  const manifests = new Map<number, Uint8Array>()
  for (const chunkBytes of [DEFAULT_CHUNK_BYTES, BIG_CHUNK_BYTES]) {
    const started = performance.now()
    const store = ModelStore.open(storeDirOf(chunkBytes))
    manifests.set(chunkBytes, (await store.addFile(modelPath, { chunkBytes })).model.bytes)
    store.close()
    const ms = performance.now() - started
    if (ms > 1000) log(`built the ${chunkBytes / 2 ** 20} MiB-chunk manifest in ${(ms / 1000).toFixed(1)} s`)
  }
  const modelOf = (chunkBytes: number) => decodeManifest(manifests.get(chunkBytes)!)
  log(
    `model: ${SHAPE_NAME} shape, ${TYPE}, ${(fileBytes / 1e6).toFixed(0)} MB; ${modelOf(DEFAULT_CHUNK_BYTES).chunks.count} chunks of 4 MiB; best of ${REPEAT} rounds; ${availableParallelism()} cores`,
  )

  const root = await mkdtemp(join(tmpdir(), 'meshnet-bench-weights-'))
  const children: ChildProcess[] = []
  const clientIdentity = identityFromSeed(randomSeed())
  const client = await createMeshNode({
    identity: clientIdentity,
    localOnly: true,
    listen: ['/ip4/127.0.0.1/tcp/0'],
    websockets: false,
    dhtMode: 'off',
  })
  const store = ModelStore.open(join(root, 'client-store'))
  const loadBefore = loadavg()[0]!

  const start = async (child: Role): Promise<Child> => {
    const proc = fork(import.meta.filename, [], {
      execArgv: ['--conditions=meshnet-source'],
      env: { ...process.env, BENCH_WEIGHTS_ROLE: JSON.stringify(child) },
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    })
    children.push(proc)
    const info = await new Promise<Child['info']>((resolve, reject) => {
      proc.once('message', (m) => resolve((m as { ready: Child['info'] }).ready))
      proc.once('exit', (code) => reject(new Error(`a ${child.kind} server exited with ${code}`)))
    })
    return { process: proc, info }
  }
  /** CPU seconds a child has used so far (user + system). */
  const cpuOf = (child: Child) =>
    new Promise<number>((resolve) => {
      const onMessage = (m: unknown) => {
        if (typeof m !== 'object' || m === null || !('cpu' in m)) return
        child.process.off('message', onMessage)
        resolve((m as { cpu: number }).cpu)
      }
      child.process.on('message', onMessage)
      child.process.send('cpu')
    })

  interface Run {
    bytes: number
    /** Said in the log line and kept with the best run (how the bytes were shared between sources). */
    detail?: string
  }
  interface Config {
    name: string
    /** The child processes whose CPU counts as the servers'. */
    servers: Child[]
    run: () => Promise<Run>
    /** After each run, untimed: deletes what the run fetched. */
    after?: () => Promise<void>
  }
  interface Figures extends Run {
    ms: number
    /** CPU seconds over wall seconds, ×100 (100 = one core busy). */
    clientCpu: number
    serverCpu: number
    /** Client CPU seconds per GB moved. */
    clientCpuPerGB: number
  }
  const once = async (config: Config): Promise<Figures> => {
    const serverBefore = await Promise.all(config.servers.map(cpuOf))
    const clientBefore = process.cpuUsage()
    const started = performance.now()
    const run = await config.run()
    const ms = performance.now() - started
    const clientUsed = process.cpuUsage(clientBefore)
    const serverAfter = await Promise.all(config.servers.map(cpuOf))
    await config.after?.()
    const clientSeconds = (clientUsed.user + clientUsed.system) / 1e6
    const serverSeconds = serverAfter.reduce((n, c, k) => n + c - serverBefore[k]!, 0)
    const figures = {
      ...run,
      ms,
      clientCpu: (clientSeconds / (ms / 1000)) * 100,
      serverCpu: (serverSeconds / (ms / 1000)) * 100,
      clientCpuPerGB: clientSeconds / (run.bytes / 1e9),
    }
    log(
      `${config.name}: ${Math.round(rate(figures))} MB/s (${(ms / 1000).toFixed(2)} s; client CPU ${figures.clientCpu.toFixed(0)}%, servers ${figures.serverCpu.toFixed(0)}%)${run.detail ? `; ${run.detail}` : ''}`,
    )
    return figures
  }
  const rate = (f: Figures) => f.bytes / 1e6 / (f.ms / 1000)
  const all = (count: number) => Array.from({ length: count }, (_, i) => i)

  const copyPath = join(root, 'copy.gguf')
  const dropCopy = () => rm(copyPath, { force: true })
  /** Deletes every fetched copy (the partial models of the client's store), nothing else. */
  const dropFetched = async () => {
    for (const model of await store.list()) await store.remove(model.id)
  }
  try {
    const tcp = await start({ kind: 'tcp' })
    const http = await start({ kind: 'http' })
    type Member = Child & { peerId: ReturnType<typeof identityFromSeed>['peerId']; id: string }
    const member = async (chunkBytes: number): Promise<Member> => {
      const seed = randomSeed()
      const identity = identityFromSeed(seed)
      const child = await start({
        kind: 'weights',
        seed: Buffer.from(seed).toString('hex'),
        chunkBytes,
        client: client.nodeId,
        blastBytes: fileBytes,
      })
      await client.ping(child.info.addrs![0]!)
      return { ...child, peerId: identity.peerId, id: identity.nodeId }
    }
    const members: Member[] = []
    for (let i = 0; i < SOURCES; i++) members.push(await member(DEFAULT_CHUNK_BYTES))
    const bigMember = await member(BIG_CHUNK_BYTES)
    const one = [members[0]!]

    /** The whole fetch as an agent does it: the manifest, its record, what each member holds, every chunk. */
    const fetchFrom = async (
      sources: Member[],
      chunkBytes: number,
      options: FetchOptions = {},
      /** Bulk chunks on direct TCP connections, as the agent asks for them (false: the libp2p stream). */
      direct = true,
    ): Promise<Run> => {
      const signal = AbortSignal.timeout(RUN_TIMEOUT_MS)
      const id = modelOf(chunkBytes).id
      const manifest = await fetchManifest(client, sources[0]!.peerId, id, signal)
      const stored = await store.addPartial(manifest, { id })
      const count = stored.model.chunks.count
      const peers: ChunkSource[] = await Promise.all(
        sources.map(async (m) =>
          peerSource(
            client,
            { id: m.id, dial: m.peerId, ...(direct ? { host: '127.0.0.1' } : {}) },
            id,
            await fetchHave(client, m.peerId, id, count, signal),
          ),
        ),
      )
      const done = await fetchChunks(store, stored, all(count), () => peers, { ...options, signal })
      const shares = sources.map((m) => ((done.sources[m.id] ?? 0) / 1e6).toFixed(0))
      return {
        bytes: done.doneBytes,
        ...(sources.length > 1 ? { detail: `MB per member ${shares.join(' / ')}` } : {}),
      }
    }

    const tcpCopy: Config = {
      name: 'plain TCP copy (the limit)',
      servers: [tcp],
      run: () =>
        new Promise((resolve, reject) => {
          const socket = connect(tcp.info.port!, '127.0.0.1')
          const file = createWriteStream(copyPath)
          socket.on('error', reject)
          file.on('error', reject)
          file.on('finish', () =>
            file.bytesWritten === fileBytes
              ? resolve({ bytes: file.bytesWritten })
              : reject(new Error(`the TCP copy moved ${file.bytesWritten} of ${fileBytes} bytes`)),
          )
          socket.pipe(file)
        }),
      after: dropCopy,
    }
    const hasCurl = spawnSync('curl', ['--version']).error === undefined
    const curl: Config = {
      name: 'curl from the HTTP range server',
      servers: [http],
      run: () =>
        new Promise((resolve, reject) => {
          const proc = spawn('curl', ['-sS', '--fail', '-o', copyPath, http.info.url!], { stdio: 'inherit' })
          proc.on('error', reject)
          proc.on('exit', (code) =>
            code === 0 ? resolve({ bytes: fileBytes }) : reject(new Error(`curl exited with ${code}`)),
          )
        }),
      after: dropCopy,
    }
    const url: Config = {
      name: 'weights, urlSource from the HTTP server',
      servers: [http],
      run: async () => {
        const stored = await store.addPartial(manifests.get(DEFAULT_CHUNK_BYTES)!)
        const done = await fetchChunks(store, stored, all(stored.model.chunks.count), () => [
          urlSource(http.info.url!, stored.model),
        ])
        return { bytes: done.doneBytes }
      },
      after: dropFetched,
    }
    const mesh = members.map(
      (_, i): Config => ({
        name: `weights, ${i + 1} member${i === 0 ? '' : 's'}, 4 MiB chunks`,
        servers: members.slice(0, i + 1),
        run: () => fetchFrom(members.slice(0, i + 1), DEFAULT_CHUNK_BYTES),
        after: dropFetched,
      }),
    )
    const big: Config = {
      name: 'weights, 1 member, 16 MiB chunks',
      servers: [bigMember],
      run: () => fetchFrom([bigMember], BIG_CHUNK_BYTES),
      after: dropFetched,
    }
    const tuned = (name: string, options: FetchOptions): Config => ({
      name: `weights, 1 member, ${name}`,
      servers: one,
      run: () => fetchFrom(one, DEFAULT_CHUNK_BYTES, options),
      after: dropFetched,
    })
    const overLibp2p: Config = {
      name: 'weights, 1 member, libp2p stream only (no direct)',
      servers: one,
      run: () => fetchFrom(one, DEFAULT_CHUNK_BYTES, {}, false),
      after: dropFetched,
    }
    const variants = [
      overLibp2p,
      tuned('perSource 2', { perSource: 2 }),
      tuned('batchBytes 16 MiB', { batchBytes: 16 * 2 ** 20 }),
    ]
    const libp2p: Config = {
      name: 'libp2p alone (noise + yamux: zeros, no disk)',
      servers: one,
      run: async () => {
        const stream = await client.libp2p.dialProtocol(members[0]!.peerId, BLAST_PROTOCOL, {
          signal: AbortSignal.timeout(RUN_TIMEOUT_MS),
        })
        let bytes = 0
        for await (const chunk of stream) bytes += chunk.byteLength
        if (bytes !== fileBytes)
          throw new Error(`the blast stream ended after ${bytes} of ${fileBytes} bytes`)
        return { bytes }
      },
    }
    const protocolOnly: Config = {
      name: 'weights protocol alone, libp2p stream (no hash, no write)',
      servers: one,
      run: async () => {
        const model = modelOf(DEFAULT_CHUNK_BYTES)
        const signal = AbortSignal.timeout(RUN_TIMEOUT_MS)
        const source = peerSource(
          client,
          { id: members[0]!.id, dial: members[0]!.peerId },
          model.id,
          new Uint8Array(),
        )
        // As fetchChunks asks by default: 16 MiB batches, two requests in flight.
        const indices = all(model.chunks.count)
        const batches: number[][] = []
        for (let i = 0; i < indices.length; i += 4) batches.push(indices.slice(i, i + 4))
        let bytes = 0
        const worker = async () => {
          for (let batch = batches.shift(); batch !== undefined; batch = batches.shift()) {
            for await (const chunk of source.fetch(batch, signal)) bytes += chunk.bytes.length
          }
        }
        await Promise.all([worker(), worker()])
        return { bytes }
      },
    }
    const hashOnly: Config = {
      name: 'read + SHA-256 in the client (no network)',
      servers: [],
      run: async () => {
        const { chunks } = modelOf(DEFAULT_CHUNK_BYTES)
        const handle = await open(modelPath, 'r')
        const buffer = new Uint8Array(DEFAULT_CHUNK_BYTES)
        let bytes = 0
        try {
          for (let i = 0; i < chunks.count; i++) {
            const view = buffer.subarray(0, chunks.length[i]!)
            await handle.read(view, 0, view.length, chunks.offset[i]!)
            if (sha256Hex(view) !== chunks.hash[i]) throw new Error(`chunk ${i} does not match its hash`)
            bytes += view.length
          }
        } finally {
          await handle.close()
        }
        return { bytes }
      },
    }
    const configs = [
      tcpCopy,
      ...(hasCurl ? [curl] : []),
      url,
      ...mesh,
      big,
      ...variants,
      libp2p,
      protocolOnly,
      hashOnly,
    ]

    // One untimed copy first, so that no run is the first to write into memory this VM has not touched yet.
    log('warm-up: one untimed plain TCP copy')
    await tcpCopy.run()
    await tcpCopy.after?.()
    // Rounds of every configuration, so that a slow spell of the machine falls on all of them.
    const best = new Map<Config, Figures>()
    for (let round = 0; round < REPEAT; round++) {
      for (const config of configs) {
        const figures = await once(config)
        const before = best.get(config)
        if (before === undefined || figures.ms < before.ms) best.set(config, figures)
      }
    }

    const reference = best.get(tcpCopy)!
    console.log()
    const COLUMNS = [
      'MB',
      's',
      'MB/s',
      '× TCP copy',
      'client CPU %',
      'client CPU s/GB',
      'servers CPU %',
    ] as const
    table(
      [...configs, ...(hasCurl ? [] : [curl])].map((config): Record<string, string | number> => {
        const f = best.get(config)
        if (f === undefined) {
          return {
            config: config.name,
            ...Object.fromEntries(COLUMNS.map((c) => [c, '-'])),
            note: 'skipped: curl is not installed',
          }
        }
        return {
          config: config.name,
          MB: Math.round(f.bytes / 1e6),
          s: f.ms / 1000,
          'MB/s': Math.round(rate(f)),
          '× TCP copy': rate(f) / rate(reference),
          'client CPU %': Math.round(f.clientCpu),
          'client CPU s/GB': f.clientCpuPerGB,
          'servers CPU %': Math.round(f.serverCpu),
          note: f.detail ?? '',
        }
      }),
    )
    console.log(
      `Best of ${REPEAT} rounds. CPU % = CPU time over wall time (100 = one core busy): the client is this process (which also writes the copy), the servers are the child processes (curl's own CPU is not counted). ` +
        `load average: ${loadBefore.toFixed(1)} before, ${loadavg()[0]!.toFixed(1)} after (${availableParallelism()} cores)`,
    )
    console.log()
    const ratio = (a: Config, b: Config) => rate(best.get(a)!) / rate(best.get(b)!)
    const oneMember = mesh[0]!
    const bar = ratio(oneMember, tcpCopy)
    console.log(
      `weights from one member vs the plain TCP copy: ${bar.toFixed(2)}× (bar ≥ ${BAR}×: ${bar >= BAR ? 'PASS' : 'MISS'})`,
    )
    for (const config of mesh.slice(1))
      console.log(`${config.name} vs 1 member: ${ratio(config, oneMember).toFixed(2)}×`)
    console.log(`16 MiB chunks vs 4 MiB, 1 member: ${ratio(big, oneMember).toFixed(2)}×`)
    console.log(
      `urlSource vs curl: ${hasCurl ? `${ratio(url, curl).toFixed(2)}×` : 'no reference (curl is not installed)'}; vs the plain TCP copy: ${ratio(url, tcpCopy).toFixed(2)}×`,
    )
    console.log(
      `libp2p alone vs the plain TCP copy: ${ratio(libp2p, tcpCopy).toFixed(2)}×; weights over the libp2p stream only vs the plain TCP copy: ${ratio(overLibp2p, tcpCopy).toFixed(2)}×, vs libp2p alone: ${ratio(overLibp2p, libp2p).toFixed(2)}×, vs the weights protocol alone: ${ratio(overLibp2p, protocolOnly).toFixed(2)}×`,
    )
  } finally {
    await Promise.all(children.map(stopChild))
    await client.stop()
    store.close()
    await rm(root, { recursive: true, force: true })
  }
}

function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve()
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000)
    child.once('exit', () => {
      clearTimeout(timer)
      resolve()
    })
    child.send('stop')
  })
}

/** A child process: serves the model as `role` says, answers 'cpu', exits on 'stop' or when the bench goes. */
async function serve(role: Role): Promise<void> {
  let stopServing: () => Promise<void>
  let info: Child['info']
  if (role.kind === 'tcp') {
    const server = createServer((socket) => {
      const file = createReadStream(modelPath, { highWaterMark: 2 ** 20 })
      socket.on('error', () => file.destroy())
      file.pipe(socket)
    })
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    info = { port: (server.address() as AddressInfo).port }
    stopServing = () => new Promise((resolve) => server.close(() => resolve()))
  } else if (role.kind === 'http') {
    const server = await startRangeServer(modelPath)
    info = { url: server.url }
    stopServing = () => server.close()
  } else {
    const store = ModelStore.open(storeDirOf(role.chunkBytes))
    await store.addFile(modelPath, { chunkBytes: role.chunkBytes })
    const node = await createMeshNode({
      identity: identityFromSeed(Buffer.from(role.seed, 'hex')),
      localOnly: true,
      listen: ['/ip4/127.0.0.1/tcp/0'],
      websockets: false,
      dhtMode: 'off',
    })
    const server = new WeightsServer({
      node,
      store,
      authorize: (id) => id === role.client,
      directHost: '127.0.0.1',
    })
    await server.start()
    // `blastBytes` zeros on every stream, in 64 KiB messages: libp2p alone, no disk, no framing.
    await node.libp2p.handle(BLAST_PROTOCOL, async (stream) => {
      const block = new Uint8Array(64 * 1024)
      try {
        for (let left = role.blastBytes; left > 0; left -= block.length) {
          if (!stream.send(block.subarray(0, Math.min(left, block.length)))) await stream.onDrain()
        }
        await stream.close()
      } catch (err) {
        stream.abort(err as Error)
      }
    })
    info = { addrs: node.multiaddrs().map(String) }
    stopServing = async () => {
      await server.stop()
      await node.stop()
      store.close()
    }
  }
  let stopping = false
  const stop = async () => {
    if (stopping) return
    stopping = true
    await stopServing()
    process.exit(0)
  }
  process.on('message', (message) => {
    if (message === 'stop') void stop()
    if (message === 'cpu') {
      const used = process.cpuUsage()
      process.send?.({ cpu: (used.user + used.system) / 1e6 })
    }
  })
  process.on('disconnect', () => void stop())
  process.send?.({ ready: info })
}
