import type { SDKClient } from '../client.ts'
import type { Session } from '../types.ts'

/** How often the event loop's lateness is sampled, in ms. */
const RESOLUTION_MS = 10

/**
 * `connectionManager.maxEventLoopDelay` and `pollInterval`: every `pollInterval` the longest
 * event-loop delay since the last reading is compared with `maxEventLoopDelay`. While it is over,
 * the SDK is "busy": a new inbound connection is closed as soon as it opens, unless the SDK has
 * fewer than `minConnections` peers. Connections it already holds are never dropped for it (an app
 * that is busy for a moment should keep its peers). Entering and leaving the busy state are
 * `p2p:debug` events (subsystem `sdk`). Does nothing unless `maxEventLoopDelay` is set; the
 * timers end with the session. The delay is sampled by a timer of its own (how late it fires), not
 * by `perf_hooks.monitorEventLoopDelay`, whose histograms stop recording in a process where another
 * one was disabled (an SDK that disconnected).
 */
export function watchEventLoop(client: SDKClient, session: Session): void {
  const { maxEventLoopDelay, pollInterval, minConnections } = client.config.p2pConfig.connectionManager
  if (maxEventLoopDelay === undefined) return
  // The longest lateness of a RESOLUTION_MS timer since the last reading.
  let longest = 0
  let expected = performance.now() + RESOLUTION_MS
  const sampler = setInterval(() => {
    const now = performance.now()
    longest = Math.max(longest, now - expected)
    expected = now + RESOLUTION_MS
  }, RESOLUTION_MS)
  sampler.unref()
  session.timers.push(sampler)
  let busy = false
  const timer = setInterval(() => {
    const delayMs = longest
    longest = 0
    if (delayMs > maxEventLoopDelay === busy) return
    busy = !busy
    client.debug(
      'sdk',
      'info',
      busy
        ? `event loop held for ${Math.round(delayMs)} ms, over connectionManager.maxEventLoopDelay ` +
            `(${maxEventLoopDelay} ms): refusing new inbound connections`
        : `event loop delay back under connectionManager.maxEventLoopDelay (${maxEventLoopDelay} ms): ` +
            'accepting inbound connections',
    )
  }, pollInterval)
  timer.unref()
  session.timers.push(timer)
  session.node.libp2p.addEventListener('connection:open', (event) => {
    const connection = event.detail
    if (!busy || connection.direction !== 'inbound') return
    if (session.node.libp2p.getPeers().length <= minConnections) return
    client.debug(
      'sdk',
      'info',
      `closing inbound connection from ${connection.remotePeer.toString()}: the event loop is over maxEventLoopDelay`,
    )
    void connection.close().catch(() => connection.abort(new Error('event loop over maxEventLoopDelay')))
  })
}
