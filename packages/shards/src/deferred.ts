/** A promise with its settle functions; a rejection nobody awaits is not an unhandled one. */
export interface Deferred<T> {
  promise: Promise<T>
  resolve(value: T): void
  reject(err: Error): void
}

export function deferred<T>(): Deferred<T> {
  const { promise, resolve, reject } = Promise.withResolvers<T>()
  promise.catch(() => {})
  return { promise, resolve, reject }
}
