import { InvalidArgumentError } from '@meshnet/core'

/** `/meshnet/<name>/<major.minor.patch>`: lower-case name segments, semantic version. */
const PROTOCOL_ID = /^\/meshnet\/[a-z0-9][a-z0-9-]*(\/[a-z0-9][a-z0-9-]*)*\/\d+\.\d+\.\d+$/

/** The Meshnet Kademlia DHT: a DHT of its own, apart from the public IPFS one. */
export const MESHNET_DHT_PROTOCOL = '/meshnet/kad/1.0.0'

/**
 * Builds a protocol id of the form `/meshnet/<name>/<semver>`, e.g.
 * `meshnetProtocol('pool/cert', '1.0.0')` is `/meshnet/pool/cert/1.0.0`.
 */
export function meshnetProtocol(name: string, version: string): string {
  const id = `/meshnet/${name}/${version}`
  if (!isMeshnetProtocol(id)) {
    throw new InvalidArgumentError(
      `protocol id ${JSON.stringify(id)} is not of the form /meshnet/<name>/<semver>`,
      {
        hint: 'use lower-case letters, digits and dashes for the name and x.y.z for the version',
      },
    )
  }
  return id
}

/** True when `id` has the Meshnet protocol id shape. */
export function isMeshnetProtocol(id: string): boolean {
  return PROTOCOL_ID.test(id)
}
