import { expect, it } from 'vitest'

it('exports exactly the public surface', async () => {
  expect(Object.keys(await import('./index.ts')).sort()).toMatchInlineSnapshot(`
    [
      "CorruptFileError",
      "DATA_DIR_ENV",
      "DEFAULT_DATA_DIR_NAME",
      "DataDirInUseError",
      "FileAccessError",
      "IDENTITY_FILE_VERSION",
      "InvalidArgumentError",
      "InvalidSignatureError",
      "LOG_LEVELS",
      "LOG_LEVEL_ENV",
      "MeshError",
      "createLogger",
      "dataDirLayout",
      "decodeIdentityFile",
      "domainSeparated",
      "encodeIdentityFile",
      "ensureDataDir",
      "generateIdentity",
      "identityFromSeed",
      "isMeshError",
      "loadIdentity",
      "loadOrCreateIdentity",
      "logLevelFromEnv",
      "printFields",
      "printJson",
      "processIo",
      "publicKeyOfSeed",
      "randomSeed",
      "reportError",
      "resolveDataDir",
      "signWithSeed",
      "silentLogger",
      "verifySignature",
      "waitForSignal",
      "writeFileAtomic",
      "writeFileExclusive",
    ]
  `)
})
