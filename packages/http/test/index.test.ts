import { expect, it } from 'vitest'

it('exports exactly the public surface', async () => {
  expect(Object.keys(await import('../src/index.ts')).sort()).toMatchInlineSnapshot(`
    [
      "RESPONSE_ALREADY_SENT",
      "SseWriter",
      "bearerMatches",
      "listen",
      "nodeServer",
      "readJsonBody",
      "writeStreamed",
    ]
  `)
})
