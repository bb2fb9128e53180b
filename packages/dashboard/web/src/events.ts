import type { DashboardJobEvent, DashboardState } from '../../src/contract.ts'
import { agentFetch, errorMessage, Unauthorized } from './api.ts'
import { readEvents } from './sse.ts'

/** Waits before reconnecting: 1 s after a stream that worked, doubling up to 10 s while it fails. */
const FIRST_RETRY_MS = 1000
const MAX_RETRY_MS = 10_000

export type Connection =
  | { status: 'connecting' }
  | { status: 'live' }
  | { status: 'retrying'; reason: string }

export interface EventHandlers {
  state(state: DashboardState): void
  job(event: DashboardJobEvent): void
  connection(connection: Connection): void
  /** The token was refused: the stream stops until the page has another one. */
  unauthorized(): void
}

/**
 * Follows the agent's `/api/dashboard/events` stream until `signal` aborts: `state` and `job`
 * events go to the handlers, and a stream that ends or breaks is opened again after a backoff.
 */
export async function followEvents(token: string, on: EventHandlers, signal: AbortSignal): Promise<void> {
  let delay = FIRST_RETRY_MS
  while (!signal.aborted) {
    on.connection({ status: 'connecting' })
    let reason = 'the stream ended'
    try {
      const res = await agentFetch('/api/dashboard/events', token, { signal, cache: 'no-store' })
      if (!res.ok || res.body === null) throw new Error(await errorMessage(res))
      on.connection({ status: 'live' })
      await readEvents(res.body, (event) => {
        delay = FIRST_RETRY_MS
        if (event.event === 'state') on.state(JSON.parse(event.data) as DashboardState)
        else if (event.event === 'job') on.job(JSON.parse(event.data) as DashboardJobEvent)
      })
    } catch (err) {
      if (signal.aborted) return
      if (err instanceof Unauthorized) {
        on.unauthorized()
        return
      }
      reason = err instanceof Error ? err.message : String(err)
    }
    if (signal.aborted) return
    on.connection({ status: 'retrying', reason })
    await sleep(delay, signal)
    delay = Math.min(delay * 2, MAX_RETRY_MS)
  }
}

/** Resolves after `ms`, or at once when `signal` aborts. */
function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer)
      signal.removeEventListener('abort', done)
      resolve()
    }
    const timer = setTimeout(done, ms)
    signal.addEventListener('abort', done, { once: true })
  })
}
