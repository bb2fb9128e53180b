/**
 * A single-consumer queue of values that ends with `end()` or `fail(err)`: what lets a job run (and
 * emit its events) whether or not anyone iterates its tokens. Iterating after the end replays the
 * buffered values, then ends or throws. Buffered values are at most the job's `maxTokens`.
 */
export class TokenQueue<T> implements AsyncIterable<T> {
  readonly #items: T[] = []
  #done = false
  #error: unknown
  #wake: (() => void) | undefined

  push(item: T): void {
    this.#items.push(item)
    this.#notify()
  }

  end(): void {
    this.#done = true
    this.#notify()
  }

  fail(err: unknown): void {
    this.#error = err
    this.#done = true
    this.#notify()
  }

  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    for (;;) {
      const item = this.#items.shift()
      if (item !== undefined) {
        yield item
        continue
      }
      if (this.#done) {
        if (this.#error !== undefined) throw this.#error
        return
      }
      await new Promise<void>((resolve) => {
        this.#wake = resolve
      })
    }
  }

  #notify(): void {
    const wake = this.#wake
    this.#wake = undefined
    wake?.()
  }
}
