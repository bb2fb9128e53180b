/**
 * An AbortSignal that fires when `parent` does or after `timeoutMs`, with a `clear()` that
 * removes the timer (so that nothing is left running once the guarded call has finished).
 */
export interface Deadline {
  readonly signal: AbortSignal
  /** True when the timeout, not the parent, aborted the signal. */
  timedOut(): boolean
  clear(): void
}

export function deadline(timeoutMs: number, parent?: AbortSignal): Deadline {
  const controller = new AbortController()
  let expired = false
  const onParentAbort = () => controller.abort(parent?.reason)
  const timer = setTimeout(() => {
    expired = true
    controller.abort(new DOMException(`timed out after ${timeoutMs} ms`, 'TimeoutError'))
  }, timeoutMs)
  if (parent?.aborted === true) onParentAbort()
  else parent?.addEventListener('abort', onParentAbort, { once: true })
  return {
    signal: controller.signal,
    timedOut: () => expired,
    clear: () => {
      clearTimeout(timer)
      parent?.removeEventListener('abort', onParentAbort)
    },
  }
}
