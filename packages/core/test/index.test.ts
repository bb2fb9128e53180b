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
      "createLogger",
      "isMeshError",
      "logLevelFromEnv",
      "loggerSchema",
      "parseWith",
      "printFields",
      "printJson",
      "processIo",
      "reportError",
      "silentLogger",
      "waitForSignal",
    ]
  `)
})
