import { expect, it } from 'vitest'

it('exports exactly the public surface', async () => {
  expect(Object.keys(await import('../src/index.ts')).sort()).toMatchInlineSnapshot(`
    [
      "DATA_DIR_ENV",
      "DEFAULT_DATA_DIR_NAME",
      "IDENTITY_FILE_VERSION",
      "IdentityMissingError",
      "dataDirLayout",
      "decodeIdentityFile",
      "domainSeparated",
      "encodeIdentityFile",
      "ensureDataDir",
      "generateIdentity",
      "identityFromSeed",
      "loadIdentity",
      "loadNodeIdentity",
      "loadOrCreateIdentity",
      "nodeIdentitySchema",
      "publicKeyOfSeed",
      "randomSeed",
      "resolveDataDir",
      "signWithSeed",
      "signingKey",
      "verifySignature",
      "writeFileAtomic",
      "writeFileAtomicSync",
      "writeFileExclusive",
    ]
  `)
})
