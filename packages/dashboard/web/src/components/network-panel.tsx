import type { DashboardNetwork } from '../../../src/contract.ts'
import { shortNodeId } from '../format.ts'

const NAT_TYPES: Record<string, string> = {
  public: 'public',
  'endpoint-independent': 'endpoint-independent NAT',
  'address-and-port-dependent': 'symmetric NAT',
  unknown: 'unknown',
}

/** How this node is reached (NAT type, relays, UPnP) and what to do when something is wrong. */
export function NetworkPanel({ network }: { network: DashboardNetwork | null }) {
  return (
    <section class="panel" data-testid="network">
      <h2>Network</h2>
      {network === null ? (
        <p class="muted">The libp2p node is not running.</p>
      ) : (
        <>
          <dl class="facts">
            <dt>NAT</dt>
            <dd data-testid="nat-type">{NAT_TYPES[network.natType] ?? network.natType}</dd>
            <dt>Reachable</dt>
            <dd>
              {network.publiclyReachable
                ? 'yes, on a confirmed public address'
                : 'not confirmed from outside'}
            </dd>
            <dt>Relays</dt>
            <dd>
              {network.relays.length === 0
                ? 'none given'
                : network.reservedRelays.length === 0
                  ? `${network.relays.length} given, no reservation`
                  : `reserved on ${network.reservedRelays.map(shortNodeId).join(', ')}`}
            </dd>
            <dt>UPnP</dt>
            <dd>{network.upnp ?? 'off'}</dd>
          </dl>
          <p class="muted nat-evidence">{network.natEvidence}</p>
          {network.advice.length > 0 && (
            <ul class="advice" data-testid="advice">
              {network.advice.map((advice) => (
                <li key={advice.message} class={advice.severity === 'warning' ? 'warn-text' : 'muted'}>
                  {withCode(advice.message)}
                </li>
              ))}
            </ul>
          )}
        </>
      )}
    </section>
  )
}

/** The advice's `commands` as code, the rest as text. */
function withCode(message: string) {
  return message.split('`').map((part, i) => (i % 2 === 1 ? <code key={part}>{part}</code> : part))
}
