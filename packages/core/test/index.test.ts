import { expect, it } from 'vitest'

it('exports exactly the public surface', async () => {
  expect(Object.keys(await import('../src/index.ts')).sort()).toMatchInlineSnapshot(`
    [
      "CorruptFileError",
      "DataDirInUseError",
      "FileAccessError",
      "InvalidArgumentError",
      "InvalidSignatureError",
      "LOG_LEVELS",
      "LOG_LEVEL_ENV",
      "MeshError",
      "REQUIRED_NODE_MAJOR",
      "createLogger",
      "isMeshError",
      "logLevelFromEnv",
      "loggerSchema",
      "nodeVersionProblem",
      "parseWith",
      "printFields",
      "printJson",
      "processIo",
      "reportError",
      "runProgram",
      "silentLogger",
      "waitForSignal",
    ]
  `)
})
