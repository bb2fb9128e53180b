import type { BootstrapResult } from '../types.ts'

/**
 * Why a bootstrap dial failed, in words that say what to check: refused (nothing listens there),
 * timed out (something listens but does not speak libp2p, or packets are dropped), refused by our
 * own allowlist/blocklist, the wrong node at that address, or the `authenticate` hook's refusal
 * (whose message is kept as it is).
 */
export function bootstrapFailureReason(err: unknown, timedOut: boolean, dialTimeoutMs: number): string {
  const error = err instanceof Error ? err : new Error(String(err))
  const code = (error as Error & { code?: unknown }).code
  if (error.name === 'PeerRefusedError') return error.message
  if (timedOut || error.name === 'TimeoutError') {
    return `timed out: no libp2p answer within ${dialTimeoutMs} ms (p2pConfig.dialTimeout)`
  }
  if (code === 'ECONNREFUSED' || /ECONNREFUSED/.test(error.message)) {
    return 'connection refused: nothing listens on that address and port'
  }
  if (error.name === 'DialDeniedError') {
    return `refused by p2pConfig.security.blocklist / allowlist (${error.message})`
  }
  if (error.name === 'UnexpectedPeerError' || /unexpected peer|peer id mismatch/i.test(error.message)) {
    return `another node answered: check the /p2p/<node id> of the address (${error.message})`
  }
  if (code === 'EHOSTUNREACH' || code === 'ENETUNREACH') return `unreachable (${error.message})`
  return error.message
}

/** The message of BootstrapUnreachableError: the guide's words, then each address and why it failed. */
export function bootstrapFailureMessage(results: readonly BootstrapResult[], rounds: number): string {
  const each = results.map(
    (result) => `${result.address}: ${result.error ?? 'not reached'} (${plural(result.attempts, 'attempt')})`,
  )
  return `Failed to connect to any bootstrap node in ${plural(rounds, 'round')}: ${each.join('; ')}`
}

function plural(count: number, noun: string): string {
  return `${count} ${noun}${count === 1 ? '' : 's'}`
}
