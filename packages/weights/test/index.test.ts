import { expect, it } from 'vitest'

it('exports exactly the public surface', async () => {
  expect(Object.keys(await import('../src/index.ts')).sort()).toMatchInlineSnapshot(`
    [
      "ChunkHashError",
      "DEFAULT_CHUNK_BYTES",
      "DiskLimitError",
      "FetchError",
      "HEADER_PIECE",
      "MANIFEST_FORMAT",
      "MAX_CHUNKS_PER_REQUEST",
      "MAX_MANIFEST_BYTES",
      "ManifestError",
      "ModelStore",
      "UnknownModelError",
      "WEIGHTS_PROTOCOL",
      "WeightsServer",
      "buildManifest",
      "buildUrlManifest",
      "chunksFor",
      "decodeManifest",
      "encodeManifest",
      "fetchChunks",
      "fetchHave",
      "fetchManifest",
      "findModel",
      "headerChunks",
      "layerCount",
      "manifestOf",
      "peerSource",
      "piecesFor",
      "readRange",
      "readUrlHeader",
      "sha256Hex",
      "urlSource",
    ]
  `)
})
