import { randomUUID } from 'node:crypto'
import { stat } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import type { PeerId } from '@libp2p/interface'
import { InvalidArgumentError } from '@meshnet/core'
import { readShardModelFacts, type ServedModel } from '@meshnet/shards'
import {
  type ChunkSource,
  chunksFor,
  type FetchProgress,
  fetchChunks,
  fetchHave,
  fetchManifest,
  findModel,
  headerChunks,
  ModelStore,
  type PieceSelection,
  peerSource,
  readUrlHeader,
  type StoredModel,
  urlSource,
  WeightsServer,
  type WeightsServerOptions,
} from '@meshnet/weights'
import { z } from 'zod'
import type { AgentContext, AgentPart } from './agent.ts'
import type { ControlRoutes } from './control-api.ts'
import type { MeshPart } from './mesh-part.ts'

/** How often a member without the manifest of its model asks its pool peers again. */
const RESOLVE_RETRY_MS = 2_000
/** A peer's answer to `have` is asked again after this long (it may have fetched more since). */
const HAVE_TTL_MS = 3_000
const PEER_TIMEOUT_MS = 10_000

export interface WeightsPart extends AgentPart {
  store(): ModelStore
  /** The served model once known: at start for a local file; for a model id or URL, once its manifest and header arrived. */
  served(): ServedModel | undefined
  /** Hears the served model when it becomes known (at once when it is). */
  onServed(listener: (model: ServedModel) => void): void
}

/** What `GET /models/pulls/:pull` answers (`mesh model-pull`). */
interface Pull {
  id: string
  /** What was asked for: a model id or a URL. */
  ref: string
  model: string | null
  state: 'resolving' | 'fetching' | 'done' | 'failed'
  totalBytes: number
  doneBytes: number
  rate: number
  sources: Record<string, number>
  badChunks: number
  error?: string
}

const pullSchema = z.strictObject({
  model: z.string().min(1).max(4096),
  layers: z.tuple([z.number().int().min(0), z.number().int().min(1)]).optional(),
  embed: z.boolean().optional(),
  head: z.boolean().optional(),
})

type ModelRef = { kind: 'file'; path: string } | { kind: 'id'; id: string } | { kind: 'url'; url: string }

/**
 * Models as content on this node: the model store (`<data dir>/models`), `/meshnet/weights/1.0.0`
 * serving what it holds to pool members, and the served model. `--model` may be a local file
 * (recorded and served whole), a model id (its manifest asked of pool peers) or an HTTP(S) URL
 * (its header read, the pool's manifest found by the header's hash); a model held by parts
 * fetches the chunks of each shard the ring gives this member before loading it
 * (`ServedModel.ensure`), from every pool member that holds them and its URL at once.
 */
export function weightsPart(
  context: AgentContext,
  mesh: MeshPart,
  options: { readChunk?: WeightsServerOptions['readChunk'] } = {},
): WeightsPart {
  const { config, layout, logger, store: meshStore } = context
  let store: ModelStore | undefined
  let server: WeightsServer | undefined
  let served: ServedModel | undefined
  const listeners: Array<(model: ServedModel) => void> = []
  const lifetime = new AbortController()
  /** Peers that sent bad bytes of a model: not asked again for it. */
  const banned = new Map<string, Set<string>>()
  const haves = new Map<string, { at: number; held: Promise<Uint8Array> }>()
  /** One fetch at a time per model: a second ensure waits and then finds its chunks held. */
  const fetching = new Map<string, Promise<unknown>>()
  const pulls = new Map<string, Pull>()
  const stats = { fetchedBytes: 0, badChunks: 0, badSources: 0, fetches: 0, failedFetches: 0 }
  /** Sources dropped by fetches: who, why, and (for a peer) its trust score after. */
  const dropped: Array<{ model: string; source: string; reason: string; trust?: number }> = []
  let current: { model: string; progress: FetchProgress } | undefined

  const modelStore = () => {
    if (store === undefined) throw new InvalidArgumentError('the model store is not open yet')
    return store
  }

  /** Connected peers that proved membership of one of our pools, by node id. */
  const poolPeers = (): Map<string, PeerId> => new Map([...poolConnections()].map(([id, c]) => [id, c.peer]))

  /** The same, with the IP of a direct (not relayed) connection to each, when there is one. */
  const poolConnections = (): Map<string, { peer: PeerId; host?: string }> => {
    const gate = mesh.gate()
    const out = new Map<string, { peer: PeerId; host?: string }>()
    for (const connection of mesh.node().libp2p.getConnections()) {
      const id = connection.remotePeer.toString()
      if (!gate.isMemberOfAny(id)) continue
      const parts = connection.remoteAddr.getComponents()
      const host =
        connection.limits === undefined && !parts.some((c) => c.name === 'p2p-circuit')
          ? parts.find((c) => c.name === 'ip4' || c.name === 'ip6')?.value
          : undefined
      const known = out.get(id)
      if (known === undefined || (known.host === undefined && host !== undefined)) {
        out.set(id, { peer: connection.remotePeer, ...(host === undefined ? {} : { host }) })
      }
    }
    return out
  }

  const sourcesFor = async (stored: StoredModel): Promise<ChunkSource[]> => {
    const node = mesh.node()
    const skip = banned.get(stored.id) ?? new Set()
    const peers = [...poolConnections()].filter(([id]) => !skip.has(id))
    const answers = await Promise.all(
      peers.map(async ([id, { peer, host }]) => {
        const key = `${stored.id}:${id}`
        let have = haves.get(key)
        if (have === undefined || performance.now() - have.at > HAVE_TTL_MS) {
          have = {
            at: performance.now(),
            held: fetchHave(
              node,
              peer,
              stored.id,
              stored.model.chunks.count,
              AbortSignal.timeout(PEER_TIMEOUT_MS),
            ),
          }
          haves.set(key, have)
        }
        const held = await have.held.catch(() => undefined)
        return held?.includes(1) ? peerSource(node, { id, dial: peer, host }, stored.id, held) : undefined
      }),
    )
    const sources = answers.filter((s) => s !== undefined)
    const url = stored.sourceUrl ?? (config.model?.match(/^https?:\/\//) ? config.model : undefined)
    if (url !== undefined && !skip.has(url)) sources.push(urlSource(url, stored.model))
    return sources
  }

  const onBadSource = (stored: StoredModel) => (source: ChunkSource, reason: string, detail: string) => {
    stats.badSources++
    if (reason === 'bad-bytes') {
      banned.set(stored.id, (banned.get(stored.id) ?? new Set()).add(source.id))
    }
    let trust: number | undefined
    if (source.kind === 'peer') {
      trust = meshStore.recordTrustEvent(source.id, {
        kind: reason === 'bad-bytes' ? 'bad-weights' : 'slow-weights',
        delta: reason === 'bad-bytes' ? -0.3 : -0.05,
        reason: detail.slice(0, 200),
      }).score
    }
    dropped.push({ model: stored.id, source: source.id, reason, ...(trust === undefined ? {} : { trust }) })
    if (dropped.length > 64) dropped.shift()
  }

  /** Fetches the chunks of `wanted` this node lacks (one fetch per model at a time). */
  const fetchWanted = async (
    stored: StoredModel,
    wanted: number[],
    options: { signal?: AbortSignal | undefined; onProgress?: (p: FetchProgress) => void } = {},
  ): Promise<void> => {
    const s = modelStore()
    const before = fetching.get(stored.id) ?? Promise.resolve()
    const run = before
      .catch(() => {})
      .then(async () => {
        if (s.missing(stored.id, wanted).length === 0) return
        stats.fetches++
        const signal = AbortSignal.any([lifetime.signal, ...(options.signal ? [options.signal] : [])])
        let counted = 0
        try {
          const done = await fetchChunks(s, stored, wanted, () => sourcesFor(stored), {
            signal,
            logger,
            onBadSource: onBadSource(stored),
            onProgress: (p) => {
              stats.fetchedBytes += p.doneBytes - counted
              counted = p.doneBytes
              current = { model: stored.id, progress: { ...p, sources: { ...p.sources } } }
              options.onProgress?.(p)
            },
          })
          stats.badChunks += done.badChunks
          logger.info(
            {
              model: stored.id,
              bytes: done.doneBytes,
              mbPerSecond: Math.round(done.rate / 1e6),
              sources: done.sources,
            },
            'fetched model chunks',
          )
        } catch (err) {
          stats.failedFetches++
          throw err
        } finally {
          current = undefined
        }
      })
    fetching.set(stored.id, run)
    await run
  }

  /** The served model for a stored one (its header on disk). */
  const describe = async (stored: StoredModel): Promise<ServedModel> => {
    const plan = await readShardModelFacts(stored.path)
    const model: ServedModel = {
      path: stored.path,
      info: { name: stored.name, sha256: stored.id, bytes: stored.model.manifest.fileBytes },
      plan,
    }
    model.whole = () =>
      modelStore()
        .held(stored.id)
        .every((h) => h === 1)
    model.ensure =
      stored.kind === 'partial'
        ? (spec, options = {}) =>
            fetchWanted(stored, chunksFor(stored.model, spec as PieceSelection), {
              signal: options.signal,
              onProgress: (p) => options.onProgress?.(p.doneBytes, p.totalBytes),
            })
        : async () => {
            // A whole file: its chunks hashed when recorded, and still the same file.
            const again = await modelStore().get(stored.id)
            if (again === undefined || modelStore().missing(stored.id, [0]).length > 0) {
              throw new InvalidArgumentError(
                `${stored.path} changed since it was recorded as model ${stored.id}`,
                {
                  hint: 'restart the agent to record the file again (it is hashed once more)',
                },
              )
            }
          }
    return model
  }

  /** Asks each pool peer in turn until `ask` answers; waits for peers when none does. */
  const askPeers = async <T>(
    what: string,
    ask: (peer: PeerId, signal: AbortSignal) => Promise<T | undefined>,
    signal: AbortSignal,
  ): Promise<T> => {
    let logged = 0
    for (;;) {
      signal.throwIfAborted()
      for (const [id, peer] of poolPeers()) {
        try {
          const found = await ask(peer, AbortSignal.any([signal, AbortSignal.timeout(PEER_TIMEOUT_MS)]))
          if (found !== undefined) return found
        } catch (err) {
          logger.debug({ peer: id, err: (err as Error).message }, `${what}: a peer could not answer`)
        }
      }
      if (performance.now() - logged > 30_000) {
        logged = performance.now()
        logger.info(`${what}: waiting for a pool member that has it`)
      }
      await new Promise((r) => setTimeout(r, RESOLVE_RETRY_MS))
    }
  }

  /** A model id or URL to a stored model whose header chunks are held (fetching both when needed). */
  const resolveRemote = async (
    ref: Exclude<ModelRef, { kind: 'file' }>,
    signal: AbortSignal,
  ): Promise<StoredModel> => {
    const s = modelStore()
    let stored: StoredModel | undefined
    if (ref.kind === 'id') {
      stored = await s.resolve(ref.id).catch(() => undefined)
      if (stored === undefined) {
        if (!/^[0-9a-f]{64}$/.test(ref.id)) {
          throw new InvalidArgumentError(`--model ${ref.id}: no such file, and not a model this node knows`, {
            hint: 'give a GGUF file, a full 64-digit model id (mesh model-ls on a member that has it), or an http(s) URL',
          })
        }
        logger.info({ model: ref.id }, 'asking pool members for the manifest of the model')
        const bytes = await askPeers(
          `the manifest of model ${ref.id.slice(0, 12)}…`,
          (peer, sig) => fetchManifest(mesh.node(), peer, ref.id, sig),
          signal,
        )
        stored = await s.addPartial(bytes, { id: ref.id })
      }
    } else {
      const header = await readUrlHeader(ref.url, signal)
      stored = await s.findByHeader(header.headerSha)
      if (stored === undefined) {
        logger.info({ url: ref.url }, 'asking pool members for the manifest of the model at the URL')
        const id = await askPeers(
          `the manifest of ${ref.url}`,
          async (peer, sig) => {
            const local = await s.findByHeader(header.headerSha)
            if (local !== undefined) return local.id
            return findModel(mesh.node(), peer, header.headerSha, sig)
          },
          signal,
        )
        stored =
          (await s.get(id)) ??
          (await s.addPartial(
            await askPeers(
              `the manifest of model ${id.slice(0, 12)}…`,
              (peer, sig) => fetchManifest(mesh.node(), peer, id, sig),
              signal,
            ),
            {
              id,
              name: decodeURIComponent(new URL(ref.url).pathname.split('/').pop() || id),
              sourceUrl: ref.url,
            },
          ))
      }
      if (stored.kind === 'partial') {
        s.setHeaderSha(stored.id, header.headerSha)
        // The header is here already: written once it matches the manifest's hashes.
        for (const i of headerChunks(stored.model)) {
          if (s.held(stored.id)[i] === 1) continue
          const at = stored.model.chunks.offset[i]!
          await s.writeChunk(stored, i, header.headerBytes.subarray(at, at + stored.model.chunks.length[i]!))
        }
      }
    }
    await fetchWanted(stored, headerChunks(stored.model), { signal })
    return stored
  }

  const parseRef = async (ref: string): Promise<ModelRef> => {
    if (/^https?:\/\//i.test(ref)) return { kind: 'url', url: ref }
    const path = resolve(ref)
    if (
      await stat(path).then(
        (s) => s.isFile(),
        () => false,
      )
    )
      return { kind: 'file', path }
    return { kind: 'id', id: ref.toLowerCase() }
  }

  const serve = (model: ServedModel) => {
    served = model
    logger.info({ model: model.info.sha256, name: model.info.name, path: model.path }, 'serving model')
    for (const listener of listeners) listener(model)
  }

  const startPull = (body: unknown): { pull: string } => {
    const request = pullSchema.parse(body)
    const pull: Pull = {
      id: randomUUID(),
      ref: request.model,
      model: null,
      state: 'resolving',
      totalBytes: 0,
      doneBytes: 0,
      rate: 0,
      sources: {},
      badChunks: 0,
    }
    pulls.set(pull.id, pull)
    void (async () => {
      const ref = await parseRef(request.model)
      if (ref.kind === 'file') {
        throw new InvalidArgumentError(`${request.model} is a local file`, {
          hint: 'record it with mesh model-add',
        })
      }
      const stored = await resolveRemote(ref, lifetime.signal)
      pull.model = stored.id
      pull.state = 'fetching'
      const layers = request.layers ?? [0, (await readShardModelFacts(stored.path)).layers]
      const selection: PieceSelection =
        request.layers === undefined
          ? { layers, embed: true, head: true }
          : { layers, embed: request.embed ?? false, head: request.head ?? false }
      await fetchWanted(stored, chunksFor(stored.model, selection), {
        onProgress: (p) => {
          Object.assign(pull, {
            totalBytes: p.totalBytes,
            doneBytes: p.doneBytes,
            rate: p.rate,
            badChunks: p.badChunks,
            sources: { ...p.sources },
          })
        },
      })
      pull.state = 'done'
    })().catch((err: Error) => {
      pull.state = 'failed'
      pull.error = err.message
      logger.warn({ pull: pull.id, err: err.message }, 'model pull failed')
    })
    return { pull: pull.id }
  }

  const routes: ControlRoutes = {
    'GET /models': async () => ({ models: await modelStore().list() }),
    'POST /models/pull': (body) => startPull(body),
    'GET /models/pulls/:pull': (_body, { pull }) => {
      const found = pulls.get(pull!)
      if (found === undefined) throw new InvalidArgumentError(`no model pull ${pull} on this agent`)
      return found
    },
  }

  return {
    name: 'weights',
    store: modelStore,
    served: () => served,
    onServed(listener) {
      listeners.push(listener)
      if (served !== undefined) listener(served)
    },
    routes,
    async start() {
      store = ModelStore.open(join(layout.root, 'models'), {
        logger,
        ...(config.diskMb === undefined ? {} : { diskLimitBytes: config.diskMb * 2 ** 20 }),
      })
      server = new WeightsServer({
        node: mesh.node(),
        store,
        // Pool members only (not clients): what a member holds goes to members of its pools.
        authorize: (nodeId) => mesh.gate().isMemberOfAny(nodeId),
        // Bulk chunks on a direct TCP connection (keys agreed over the noise-encrypted stream).
        directHost: config.localOnly === true ? '127.0.0.1' : '0.0.0.0',
        logger,
        ...(options.readChunk === undefined ? {} : { readChunk: options.readChunk }),
      })
      await server.start()
      if (config.model === undefined) return
      const ref = await parseRef(config.model)
      if (ref.kind === 'file') {
        let logged = 0
        const stored = await store.addFile(ref.path, {
          signal: lifetime.signal,
          onProgress: (done, total) => {
            if (performance.now() - logged < 5_000) return
            logged = performance.now()
            logger.info(
              { percent: Math.floor((done / total) * 100) },
              'hashing the model file (once; remembered after)',
            )
          },
        })
        serve(await describe(stored))
        return
      }
      const known = ref.kind === 'id' ? await store.resolve(ref.id).catch(() => undefined) : undefined
      if (known !== undefined && store.missing(known.id, headerChunks(known.model)).length === 0) {
        serve(await describe(known))
        return
      }
      // The manifest comes from pool peers once connected: the agent starts without waiting.
      void resolveRemote(ref, lifetime.signal)
        .then(describe)
        .then(serve)
        .catch((err: Error) => {
          if (lifetime.signal.aborted) return
          logger.error({ err: err.message, model: config.model }, 'cannot serve the model')
        })
    },
    async stop() {
      lifetime.abort()
      await server?.stop()
      await Promise.allSettled([...fetching.values()])
      store?.close()
    },
    status: () => ({
      model:
        served === undefined ? null : { id: served.info.sha256, name: served.info.name, path: served.path },
      server: server?.stats(),
      fetch: { ...stats, dropped: [...dropped], ...(current === undefined ? {} : { current }) },
    }),
  }
}
