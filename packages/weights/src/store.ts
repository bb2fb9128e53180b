import { createHash } from 'node:crypto'
import { mkdirSync, readFileSync } from 'node:fs'
import { type FileHandle, open, readFile, rm, stat, statfs, truncate, writeFile } from 'node:fs/promises'
import { basename, join, resolve } from 'node:path'
import { DatabaseSync } from 'node:sqlite'
import { type Logger, silentLogger } from '@meshnet/core'
import { ChunkHashError, DiskLimitError, UnknownModelError } from './errors.ts'
import {
  type BuildManifestOptions,
  buildManifest,
  decodeManifest,
  type Manifest,
  sha256Hex,
} from './manifest.ts'

// Models this node knows, in `<data dir>/models/`: `models.db` (node:sqlite) records each model's
// manifest and, for a partial model, which chunks are on disk; a partial model's bytes are one sparse
// file with the layout of the whole GGUF (`<id>.gguf`), so the engine and llama.cpp's vocabulary
// reader open it like the whole file, and only the chunks fetched take disk. A chunk is written,
// then recorded: after a kill -9 a chunk on disk but not recorded is fetched again, never the other
// way round. A whole local file (`mesh model-add file.gguf`, `mesh start --model file.gguf`) is
// recorded, not copied: its manifest is built once and remembered while its size, modification time
// and inode stay the same.

const SCHEMA = `
CREATE TABLE IF NOT EXISTS models (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  kind TEXT NOT NULL CHECK (kind IN ('file', 'partial')),
  path TEXT NOT NULL,
  file_key TEXT,
  header_sha TEXT NOT NULL,
  source_url TEXT,
  added INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS models_header ON models (header_sha);
CREATE INDEX IF NOT EXISTS models_path ON models (path);
CREATE TABLE IF NOT EXISTS chunks (
  model TEXT NOT NULL,
  idx INTEGER NOT NULL,
  PRIMARY KEY (model, idx)
) WITHOUT ROWID;
`

/** One model this node knows: a whole local file, or a partial copy being fetched. */
export interface StoredModel {
  id: string
  name: string
  /** `file`: a whole GGUF file of the user's, recorded in place; `partial`: fetched chunks. */
  kind: 'file' | 'partial'
  /** The file the engine opens: the user's file, or `<data dir>/models/<id>.gguf`. */
  path: string
  /** The URL it was first fetched from, if any. */
  sourceUrl?: string
  model: Manifest
}

/** What `list()` reports per model (`mesh model-ls`). */
export interface ModelSummary {
  id: string
  name: string
  kind: 'file' | 'partial'
  path: string
  fileBytes: number
  /** Bytes of the model this node holds (all of them for a whole file). */
  heldBytes: number
  /** Disk the model takes here (its manifest and, for a partial model, its chunks; 0 for a file). */
  diskBytes: number
  layers: number
  /** `[first, end)` ranges of layers whose every tensor is held. */
  completeLayers: Array<[number, number]>
  complete: boolean
  sourceUrl?: string
}

export interface ModelStoreOptions {
  logger?: Logger
  /** Largest total of fetched chunks kept (`--disk`); undefined: only the file system's free space. */
  diskLimitBytes?: number | undefined
}

interface Row {
  id: string
  name: string
  kind: 'file' | 'partial'
  path: string
  file_key: string | null
  header_sha: string
  source_url: string | null
}

export class ModelStore {
  readonly dir: string
  readonly #db: DatabaseSync
  readonly #logger: Logger
  readonly #diskLimit: number | undefined
  readonly #held = new Map<string, Uint8Array>()
  readonly #manifests = new Map<string, Manifest>()
  readonly #handles = new Map<string, Promise<FileHandle>>()
  readonly #adding = new Map<string, Promise<StoredModel>>()

  private constructor(dir: string, options: ModelStoreOptions) {
    this.dir = dir
    this.#logger = options.logger ?? silentLogger()
    this.#diskLimit = options.diskLimitBytes
    mkdirSync(join(dir, 'manifests'), { recursive: true, mode: 0o700 })
    this.#db = new DatabaseSync(join(dir, 'models.db'))
    // The wait for a lock first: switching a new database to WAL takes one, and a second process
    // (an agent and a `mesh model-*` command) opening it at that moment must wait, not fail.
    this.#db.exec('PRAGMA busy_timeout = 5000; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;')
    this.#db.exec(SCHEMA)
  }

  /** Opens (creating) the store in `dir` (an agent's is `<data dir>/models`). */
  static open(dir: string, options: ModelStoreOptions = {}): ModelStore {
    return new ModelStore(resolve(dir), options)
  }

  close(): void {
    for (const handle of this.#handles.values()) void handle.then((h) => h.close()).catch(() => {})
    this.#handles.clear()
    this.#db.close()
  }

  /**
   * Records a whole local GGUF file (hashing it once to build its manifest; a second call for the
   * same unchanged file returns the record without reading it). The file is not copied.
   */
  async addFile(path: string, options: BuildManifestOptions & { name?: string } = {}): Promise<StoredModel> {
    const absolute = resolve(path)
    const pending = this.#adding.get(absolute)
    if (pending !== undefined) return pending
    const adding = this.#addFile(absolute, options).finally(() => this.#adding.delete(absolute))
    this.#adding.set(absolute, adding)
    return adding
  }

  async #addFile(path: string, options: BuildManifestOptions & { name?: string }): Promise<StoredModel> {
    const key = await fileKey(path)
    const known = this.#db
      .prepare("SELECT * FROM models WHERE path = ? AND kind = 'file' AND file_key = ?")
      .get(path, key) as Row | undefined
    if (known !== undefined) {
      const stored = await this.#load(known)
      if (stored !== undefined) return stored
    }
    const model = await buildManifest(path, options)
    const handle = await open(path, 'r')
    let headerSha: string
    try {
      const header = new Uint8Array(model.manifest.pieces[0]!.bytes)
      await handle.read(header, 0, header.length, 0)
      headerSha = sha256Hex(header)
    } finally {
      await handle.close()
    }
    await this.#saveManifest(model)
    this.#db.prepare('DELETE FROM models WHERE path = ? AND kind = ?').run(path, 'file')
    this.#db
      .prepare(
        `INSERT INTO models (id, name, kind, path, file_key, header_sha, added) VALUES (?, ?, 'file', ?, ?, ?, ?)
         ON CONFLICT (id) DO UPDATE SET name = excluded.name, kind = 'file', path = excluded.path,
           file_key = excluded.file_key`,
      )
      .run(model.id, options.name ?? basename(path), path, key, headerSha, Date.now())
    this.#logger.info({ id: model.id, path }, 'recorded a model file')
    return { id: model.id, name: options.name ?? basename(path), kind: 'file', path, model }
  }

  /**
   * Records a model to fetch: its manifest (checked against `id` when given) and an empty sparse
   * file of its size. Returns the existing record when the model is known already.
   */
  async addPartial(
    manifestBytes: Uint8Array,
    options: { id?: string; name?: string; headerSha?: string; sourceUrl?: string } = {},
  ): Promise<StoredModel> {
    const model = decodeManifest(manifestBytes, options.id)
    const existing = await this.get(model.id)
    if (existing !== undefined) return existing
    await this.#saveManifest(model)
    const path = join(this.dir, `${model.id}.gguf`)
    await writeFile(path, new Uint8Array(0), { flag: 'a', mode: 0o600 })
    await truncate(path, model.manifest.fileBytes)
    this.#db
      .prepare(
        `INSERT INTO models (id, name, kind, path, header_sha, source_url, added) VALUES (?, ?, 'partial', ?, ?, ?, ?)`,
      )
      .run(
        model.id,
        options.name ?? `${model.id.slice(0, 12)}.gguf`,
        path,
        options.headerSha ?? '',
        options.sourceUrl ?? null,
        Date.now(),
      )
    this.#held.set(model.id, new Uint8Array(model.chunks.count))
    return {
      id: model.id,
      name: options.name ?? `${model.id.slice(0, 12)}.gguf`,
      kind: 'partial',
      path,
      model,
      ...(options.sourceUrl === undefined ? {} : { sourceUrl: options.sourceUrl }),
    }
  }

  /** The header hash of a partial model, once its header chunks are all held (see `findByHeader`). */
  setHeaderSha(id: string, headerSha: string): void {
    this.#db.prepare('UPDATE models SET header_sha = ? WHERE id = ?').run(headerSha, id)
  }

  async get(id: string): Promise<StoredModel | undefined> {
    const row = this.#db.prepare('SELECT * FROM models WHERE id = ?').get(id) as Row | undefined
    return row === undefined ? undefined : this.#load(row)
  }

  /** A model by id, id prefix (at least 8 hex digits) or name; UnknownModelError names what was asked. */
  async resolve(ref: string): Promise<StoredModel> {
    const rows = this.#db
      .prepare("SELECT * FROM models WHERE id = ? OR name = ? OR (length(?) >= 8 AND id LIKE ? || '%')")
      .all(ref, ref, ref, ref) as unknown as Row[]
    if (rows.length > 1) {
      throw new UnknownModelError(`'${ref}' names ${rows.length} models`, {
        hint: 'give more of the model id',
      })
    }
    const stored = rows[0] === undefined ? undefined : await this.#load(rows[0])
    if (stored === undefined) {
      throw new UnknownModelError(`no model '${ref}' on this node`, {
        hint: 'list them with mesh model-ls; add one with mesh model-add <file.gguf>',
      })
    }
    return stored
  }

  /** The model whose header (everything before the tensor data) hashes to `headerSha`, if held here. */
  async findByHeader(headerSha: string): Promise<StoredModel | undefined> {
    const row = this.#db.prepare('SELECT * FROM models WHERE header_sha = ? LIMIT 1').get(headerSha) as
      | Row
      | undefined
    return row === undefined ? undefined : this.#load(row)
  }

  /** Which chunks are on disk and verified (every one for a whole file). */
  held(id: string): Uint8Array {
    const known = this.#held.get(id)
    if (known !== undefined) return known
    let model = this.#manifests.get(id)
    if (model === undefined) {
      try {
        model = decodeManifest(readFileSync(this.#manifestPath(id)), id)
      } catch {
        return new Uint8Array(0)
      }
      this.#manifests.set(id, model)
    }
    const row = this.#db.prepare('SELECT kind FROM models WHERE id = ?').get(id) as
      | { kind: string }
      | undefined
    const held = new Uint8Array(model.chunks.count)
    if (row?.kind === 'file') held.fill(1)
    else {
      for (const r of this.#db.prepare('SELECT idx FROM chunks WHERE model = ?').all(id) as Array<{
        idx: number
      }>) {
        if (r.idx < held.length) held[r.idx] = 1
      }
    }
    this.#held.set(id, held)
    return held
  }

  /** The chunks of `wanted` not on disk yet. */
  missing(id: string, wanted: readonly number[]): number[] {
    const held = this.held(id)
    return wanted.filter((i) => held[i] !== 1)
  }

  /**
   * Checks a chunk against the manifest and writes it: ChunkHashError (nothing written) when it
   * does not match. A chunk already held is not written again. The bytes may come in parts (as
   * they arrived from the network), hashed and written without being joined.
   */
  async writeChunk(
    stored: StoredModel,
    index: number,
    bytes: Uint8Array | readonly Uint8Array[],
  ): Promise<void> {
    const { chunks } = stored.model
    if (index < 0 || index >= chunks.count) throw new ChunkHashError(`chunk ${index} is not in the manifest`)
    const parts = bytes instanceof Uint8Array ? [bytes] : bytes
    const length = parts.reduce((n, p) => n + p.length, 0)
    const hash = createHash('sha256')
    for (const part of parts) hash.update(part)
    if (length !== chunks.length[index] || hash.digest('hex') !== chunks.hash[index]) {
      throw new ChunkHashError(
        `chunk ${index} of model ${stored.id.slice(0, 12)}… does not match its hash (${length} bytes)`,
      )
    }
    const held = this.held(stored.id)
    if (held[index] === 1) return
    if (stored.kind !== 'partial')
      throw new ChunkHashError(`model ${stored.id.slice(0, 12)}… is a whole file`)
    const handle = await this.#handle(stored)
    let position = chunks.offset[index]!
    const rest = [...parts]
    while (rest.length > 0) {
      const { bytesWritten } = await handle.writev(rest.slice(0, 512), position)
      position += bytesWritten
      // A short write (rare): go on from the first byte not written.
      let skip = bytesWritten
      while (rest.length > 0 && skip >= rest[0]!.length) skip -= rest.shift()!.length
      if (skip > 0) rest[0] = rest[0]!.subarray(skip)
    }
    this.#db.prepare('INSERT OR IGNORE INTO chunks (model, idx) VALUES (?, ?)').run(stored.id, index)
    held[index] = 1
  }

  /** A held chunk's bytes (for a peer); undefined when not held here or the file changed. */
  async readChunk(stored: StoredModel, index: number): Promise<Uint8Array | undefined> {
    const { chunks } = stored.model
    if (index < 0 || index >= chunks.count || this.held(stored.id)[index] !== 1) return undefined
    const handle = await this.#handle(stored)
    const out = new Uint8Array(chunks.length[index]!)
    let got = 0
    while (got < out.length) {
      const { bytesRead } = await handle.read(out, got, out.length - got, chunks.offset[index]! + got)
      if (bytesRead === 0) return undefined
      got += bytesRead
    }
    return out
  }

  /**
   * Refuses a fetch of `bytes` more (DiskLimitError, before anything is written) when it would pass
   * the `--disk` limit or the free space of the store's file system.
   */
  async reserve(bytes: number): Promise<void> {
    if (bytes <= 0) return
    const mib = (n: number) => `${Math.ceil(n / 2 ** 20)} MiB`
    if (this.#diskLimit !== undefined) {
      const held = this.#partialBytes()
      if (held + bytes > this.#diskLimit) {
        throw new DiskLimitError(
          `fetching ${mib(bytes)} of model weights would take ${mib(held + bytes)} of disk, over the --disk limit of ${mib(this.#diskLimit)} (${mib(held)} held already)`,
          {
            hint: 'raise --disk, remove models with mesh model-rm, or give this member fewer layers (--memory)',
          },
        )
      }
    }
    const fs = await statfs(this.dir)
    const free = fs.bavail * fs.bsize
    if (bytes > free) {
      throw new DiskLimitError(
        `fetching ${mib(bytes)} of model weights needs more than the ${mib(free)} free in ${this.dir}`,
        {
          hint: 'free disk space or start the agent with another --data-dir',
        },
      )
    }
  }

  /** Every model, with bytes held and complete layers. */
  async list(): Promise<ModelSummary[]> {
    const rows = this.#db.prepare('SELECT * FROM models ORDER BY added').all() as unknown as Row[]
    const out: ModelSummary[] = []
    for (const row of rows) {
      const stored = await this.#load(row)
      if (stored === undefined) continue
      out.push(this.summary(stored))
    }
    return out
  }

  summary(stored: StoredModel): ModelSummary {
    const { model } = stored
    const held = this.held(stored.id)
    let heldBytes = 0
    for (let i = 0; i < model.chunks.count; i++) if (held[i] === 1) heldBytes += model.chunks.length[i]!
    const layerDone = new Map<number, boolean>()
    for (let i = 0; i < model.chunks.count; i++) {
      const name = model.manifest.pieces[model.chunks.piece[i]!]!.name
      const m = /^blk\.(\d+)\./.exec(name)
      if (m === null) continue
      const n = Number(m[1])
      layerDone.set(n, (layerDone.get(n) ?? true) && held[i] === 1)
    }
    const layers = layerDone.size === 0 ? 0 : Math.max(...layerDone.keys()) + 1
    const completeLayers: Array<[number, number]> = []
    for (let n = 0; n < layers; n++) {
      if (layerDone.get(n) !== true) continue
      const last = completeLayers.at(-1)
      if (last !== undefined && last[1] === n) last[1] = n + 1
      else completeLayers.push([n, n + 1])
    }
    const manifestBytes = model.bytes.length
    return {
      id: stored.id,
      name: stored.name,
      kind: stored.kind,
      path: stored.path,
      fileBytes: model.manifest.fileBytes,
      heldBytes,
      diskBytes: manifestBytes + (stored.kind === 'partial' ? heldBytes : 0),
      layers,
      completeLayers,
      complete: held.every((h) => h === 1),
      ...(stored.sourceUrl === undefined ? {} : { sourceUrl: stored.sourceUrl }),
    }
  }

  /** Forgets a model; a partial model's file is deleted, a whole file of the user's is left alone. */
  async remove(id: string): Promise<StoredModel> {
    const stored = await this.resolve(id)
    const handle = this.#handles.get(stored.id)
    this.#handles.delete(stored.id)
    await handle?.then((h) => h.close()).catch(() => {})
    this.#db.prepare('DELETE FROM chunks WHERE model = ?').run(stored.id)
    this.#db.prepare('DELETE FROM models WHERE id = ?').run(stored.id)
    this.#held.delete(stored.id)
    this.#manifests.delete(stored.id)
    await rm(this.#manifestPath(stored.id), { force: true })
    if (stored.kind === 'partial') await rm(stored.path, { force: true })
    return stored
  }

  #partialBytes(): number {
    const rows = this.#db.prepare("SELECT id FROM models WHERE kind = 'partial'").all() as Array<{
      id: string
    }>
    let total = 0
    for (const { id } of rows) {
      const model = this.#manifests.get(id)
      if (model === undefined) continue
      const held = this.held(id)
      for (let i = 0; i < model.chunks.count; i++) if (held[i] === 1) total += model.chunks.length[i]!
    }
    return total
  }

  #manifestPath(id: string): string {
    return join(this.dir, 'manifests', `${id}.json`)
  }

  async #saveManifest(model: Manifest): Promise<void> {
    this.#manifests.set(model.id, model)
    await writeFile(this.#manifestPath(model.id), model.bytes, { mode: 0o600 })
  }

  async #load(row: Row): Promise<StoredModel | undefined> {
    let model = this.#manifests.get(row.id)
    if (model === undefined) {
      try {
        model = decodeManifest(await readFile(this.#manifestPath(row.id)), row.id)
      } catch (err) {
        this.#logger.warn(
          { id: row.id, err: (err as Error).message },
          'a model manifest is missing or damaged',
        )
        return undefined
      }
      this.#manifests.set(row.id, model)
    }
    if (row.kind === 'file' && row.file_key !== (await fileKey(row.path).catch(() => null))) {
      // The user's file changed or went away: nothing of it is served or loaded under the old id.
      this.#held.set(row.id, new Uint8Array(model.chunks.count))
    }
    return {
      id: row.id,
      name: row.name,
      kind: row.kind,
      path: row.path,
      model,
      ...(row.source_url === null ? {} : { sourceUrl: row.source_url }),
    }
  }

  #handle(stored: StoredModel): Promise<FileHandle> {
    let handle = this.#handles.get(stored.id)
    if (handle === undefined) {
      handle = open(stored.path, stored.kind === 'partial' ? 'r+' : 'r')
      handle.catch(() => this.#handles.delete(stored.id))
      this.#handles.set(stored.id, handle)
    }
    return handle
  }
}

async function fileKey(path: string): Promise<string> {
  const info = await stat(path)
  return `${info.size}:${info.mtimeMs}:${info.ino}`
}
