import { expect, it } from 'vitest'

it('exports exactly the public surface', async () => {
  expect(Object.keys(await import('../src/index.ts')).sort()).toMatchInlineSnapshot(`
    [
      "MESH_BIN",
      "REPO_ROOT",
      "SDK_FORBIDDEN_DEPENDENCIES",
      "agentRequest",
      "beaconPort",
      "buildDashboard",
      "createModel",
      "eventually",
      "launchBrowser",
      "meshnetClosure",
      "modelDir",
      "packWorkspace",
      "packageDir",
      "runMesh",
      "startAgentProcess",
      "startRangeServer",
      "withBuildLock",
      "withChatTemplate",
      "withMetadata",
    ]
  `)
})
