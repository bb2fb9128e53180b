import type { DashboardMember, LinkType } from '../../../src/contract.ts'
import { formatBytes, formatMs, layerRange, percent, shortNodeId } from '../format.ts'
import { ProgressBar } from './progress-bar.tsx'

const LINK_TEXT: Record<LinkType, string> = {
  self: 'self',
  lan: 'LAN',
  direct: 'direct',
  relayed: 'relayed',
  none: 'none',
}

/** The ring's members, one row each, in ring order. */
export function MemberTable({ members }: { members: readonly DashboardMember[] }) {
  return (
    <div class="table-box">
      <table class="members">
        <thead>
          <tr>
            <th>Node</th>
            <th class="num">Pos</th>
            <th>Layers</th>
            <th>Load</th>
            <th class="num">Offered</th>
            <th class="num">Used</th>
            <th>Trust</th>
            <th>Link</th>
            <th class="num">RTT</th>
          </tr>
        </thead>
        <tbody>
          {[...members]
            .sort((a, b) => a.position - b.position)
            .map((member) => (
              <MemberRow key={member.nodeId} member={member} />
            ))}
        </tbody>
      </table>
    </div>
  )
}

function MemberRow({ member }: { member: DashboardMember }) {
  const { shard, link } = member
  return (
    <tr data-testid="member-row" data-node-id={member.nodeId} class={member.self ? 'self' : undefined}>
      <td>
        <code title={member.self ? `${member.nodeId} (this node)` : member.nodeId}>
          {shortNodeId(member.nodeId)}
        </code>
      </td>
      <td class="num">{member.position}</td>
      <td data-testid="member-layers">{shard === null ? '–' : layerRange(shard.layers)}</td>
      <td>
        {shard === null ? (
          <span class="muted">no shard</span>
        ) : (
          <div class="load">
            <span class={`badge load-${shard.load}`} title={shard.error ?? undefined}>
              {shard.load}
            </span>
            {(shard.load === 'fetching' || shard.load === 'loading') && (
              <>
                <ProgressBar
                  done={shard.loadedBytes}
                  total={shard.bytes}
                  label={`${formatBytes(shard.loadedBytes)} of ${formatBytes(shard.bytes)}`}
                />
                <span class="muted">{Math.round(percent(shard.loadedBytes, shard.bytes))}%</span>
              </>
            )}
            {shard.error !== null && <span class="error-text">{shard.error}</span>}
          </div>
        )}
      </td>
      <td class="num">{formatBytes(member.offeredBytes)}</td>
      <td class="num">{formatBytes(member.usedBytes)}</td>
      <td>
        <div class="trust">
          <ProgressBar
            done={member.trust}
            total={1}
            label={`trust ${member.trust.toFixed(2)}`}
            tone={member.trust < 0.5 ? 'warn' : 'ok'}
          />
          <span>{member.trust.toFixed(2)}</span>
        </div>
      </td>
      <td title={link.address ?? undefined}>{LINK_TEXT[link.type]}</td>
      <td class="num">{formatMs(link.rttMs)}</td>
    </tr>
  )
}
