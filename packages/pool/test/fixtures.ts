import { generateIdentity, publicKeyOfSeed, randomSeed, signWithSeed } from '@meshnet/identity'
import { expect } from 'vitest'
import {
  type Certificate,
  type IssueCertificateOptions,
  issueCertificate,
  type PoolSigner,
} from '../src/certificate.ts'
import { poolIdFromRootKey } from '../src/encoding.ts'

/** A fresh pool root key as a signer, with its pool id. */
export function newRoot(): PoolSigner & { poolId: string } {
  const seed = randomSeed()
  const publicKey = publicKeyOfSeed(seed)
  return { publicKey, sign: (d, p) => signWithSeed(seed, d, p), poolId: poolIdFromRootKey(publicKey) }
}

/** Runs `fn`, expects it to throw an error named `name`, and returns that error's `reason`. */
export function reasonOf(name: string, fn: () => unknown): string {
  try {
    fn()
  } catch (err) {
    expect((err as Error).name).toBe(name)
    return (err as { reason: string }).reason
  }
  throw new Error(`expected a ${name}`)
}

/** 2026-11-20T10:00Z, the clock of most tests. */
export const T0 = Date.UTC(2026, 10, 20, 10, 0, 0)

/** A certificate issued at T0 by `signer`; a member certificate for a fresh device unless told otherwise. */
export function certFor(
  signer: PoolSigner,
  poolId: string,
  options: Partial<Omit<IssueCertificateOptions, 'poolId'>> = {},
): Certificate {
  return issueCertificate(signer, {
    poolId,
    devicePublicKey: generateIdentity().publicKey,
    role: 'member',
    issuedAt: T0,
    ...options,
  })
}
