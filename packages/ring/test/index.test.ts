import { expect, it } from 'vitest'

it('exports exactly the public surface', async () => {
  expect(Object.keys(await import('../src/index.ts')).sort()).toMatchInlineSnapshot(`
    [
      "ANNOUNCEMENT_DOMAIN",
      "AnnouncementError",
      "MAX_ANNOUNCEMENT_BYTES",
      "MAX_CERT_EXCHANGE_BYTES",
      "POOL_CERT_PROTOCOL",
      "PoolAccessError",
      "PoolGate",
      "RingGossip",
      "RingMembership",
      "ShardPlanError",
      "apportion",
      "decodeAnnouncement",
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
