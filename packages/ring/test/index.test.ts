import { expect, it } from 'vitest'

it('exports exactly the public surface', async () => {
  expect(Object.keys(await import('../src/index.ts')).sort()).toMatchInlineSnapshot(`
    [
      "ANNOUNCEMENT_DOMAIN",
      "AnnouncementError",
      "MAX_ANNOUNCEMENT_BYTES",
      "MAX_RING_SYNC_BYTES",
      "RING_SYNC_PROTOCOL",
      "RingGossip",
      "RingMembership",
      "ShardPlanError",
      "apportion",
      "decodeAnnouncement",
      "decodeSyncRequest",
      "encodeAnnouncement",
      "planPipeline",
      "planTensor",
      "readTopologyFile",
      "ringGossip",
      "ringPubsub",
      "ringTopic",
      "topologyOf",
      "writeTopologyFile",
    ]
  `)
})
