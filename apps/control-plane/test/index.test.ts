import { expect, it } from 'vitest'

it('exports exactly the public surface', async () => {
  expect(Object.keys(await import('../src/index.ts')).sort()).toMatchInlineSnapshot(`
    [
      "CONTROL_PLANE_DEFAULTS",
      "JOB_LIMITS",
      "MAX_BODY_BYTES",
      "PortsInUseError",
      "controlPlaneFiles",
      "startControlPlane",
    ]
  `)
})
