import { describe, expect, it } from 'vitest'
import { encodeCanonical, omitFields } from '../src/encoding.ts'
import {
  createRevocationList,
  decodeRevocationList,
  encodeRevocationList,
  REVOCATION_LIST_DOMAIN,
  type RevocationList,
} from '../src/revocation.ts'
import { reasonOf as errorReason, newRoot } from './fixtures.ts'

const reasonOf = (fn: () => unknown) => errorReason('RevocationListError', fn)

describe('revocation lists', () => {
  it('sorts and de-duplicates entries, and round-trips through the same bytes', () => {
    const root = newRoot()
    const list = createRevocationList(root, {
      poolId: root.poolId,
      version: 3,
      serials: ['ff'.repeat(16), '00'.repeat(16), 'ff'.repeat(16)],
      issuedAt: 1,
    })
    expect(list.serials).toEqual(['00'.repeat(16), 'ff'.repeat(16)])
    const bytes = encodeRevocationList(list)
    const decoded = decodeRevocationList(bytes, { poolId: root.poolId, rootPublicKey: root.publicKey })
    expect(decoded).toEqual(list)
    expect(encodeRevocationList(decoded)).toEqual(bytes)
  })

  it('refuses a list not signed by the pool root, or for another pool', () => {
    const root = newRoot()
    const other = newRoot()
    const options = { poolId: root.poolId, rootPublicKey: root.publicKey }
    const forged = createRevocationList(other, { poolId: other.poolId, version: 9 })
    const relabelled = { ...forged, poolId: root.poolId }
    expect(reasonOf(() => decodeRevocationList(encodeRevocationList(relabelled), options))).toBe(
      'bad-signature',
    )
    expect(reasonOf(() => decodeRevocationList(encodeRevocationList(forged), options))).toBe('wrong-pool')
  })

  it('refuses unsorted entries even when correctly signed, so one list has one encoding', () => {
    const root = newRoot()
    const unsigned = {
      type: REVOCATION_LIST_DOMAIN,
      poolId: root.poolId,
      version: 1,
      issuedAt: 1,
      serials: ['ff'.repeat(16), '00'.repeat(16)],
      nodeIds: [],
    }
    const list = { ...unsigned, signature: root.sign(REVOCATION_LIST_DOMAIN, encodeCanonical(unsigned)) }
    expect(
      reasonOf(() =>
        decodeRevocationList(encodeCanonical(list), { poolId: root.poolId, rootPublicKey: root.publicKey }),
      ),
    ).toBe('malformed')
    expect(omitFields(list as RevocationList, ['signature'])).not.toHaveProperty('signature')
  })
})
