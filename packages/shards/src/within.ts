import { ShardSessionError } from '@meshnet/protocols'

/** Fails `promise` when it has not settled within `ms` (a link or frame a peer never sent). */
export function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new ShardSessionError(`${what} did not arrive within ${ms} ms`)), ms)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}
