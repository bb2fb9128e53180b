/**
 * @packageDocumentation
 * Models as content. A GGUF file's manifest lists its header and tensors cut into chunks with a
 * SHA-256 each; the model id is the hash of the manifest. A member keeps only the chunks of its
 * shard, in a sparse file with the whole file's layout, fetched from pool members over
 * `/meshnet/weights/1.0.0` and from HTTP range servers at once, every chunk checked before it is
 * written.
 */
export {
  ChunkHashError,
  DiskLimitError,
  FetchError,
  ManifestError,
  UnknownModelError,
} from './errors.ts'
export type { ChunkSource, FetchOptions, FetchProgress } from './fetcher.ts'
export { fetchChunks } from './fetcher.ts'
export type {
  BuildManifestOptions,
  ChunkTable,
  Manifest,
  ManifestPiece,
  ModelManifest,
  PieceSelection,
} from './manifest.ts'
export {
  buildManifest,
  chunksFor,
  DEFAULT_CHUNK_BYTES,
  decodeManifest,
  encodeManifest,
  HEADER_PIECE,
  headerChunks,
  layerCount,
  MANIFEST_FORMAT,
  MAX_MANIFEST_BYTES,
  manifestOf,
  piecesFor,
  sha256Hex,
} from './manifest.ts'
export type { WeightsNode, WeightsServerOptions, WeightsServerStats } from './protocol.ts'
export {
  fetchHave,
  fetchManifest,
  findModel,
  MAX_CHUNKS_PER_REQUEST,
  peerSource,
  WEIGHTS_PROTOCOL,
  WeightsServer,
} from './protocol.ts'
export type { ModelStoreOptions, ModelSummary, StoredModel } from './store.ts'
export { ModelStore } from './store.ts'
export type { UrlHeader } from './url.ts'
export { buildUrlManifest, readRange, readUrlHeader, urlSource } from './url.ts'
