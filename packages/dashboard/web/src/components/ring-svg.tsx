import type { DashboardMember, DashboardRing } from '../../../src/contract.ts'
import { layerRange, shortNodeId } from '../format.ts'

const WIDTH = 440
const HEIGHT = 350
const CX = WIDTH / 2
const CY = HEIGHT / 2
const RADIUS = 100
const LABEL_RADIUS = 124
/** Degrees left blank between two members' arcs. */
const GAP = 7

/**
 * The ring as a ring: each member a dot at its position, and after it, up to the next member, an
 * arc for its shard (the layers it runs, colored by how far it has loaded them).
 */
export function RingSvg({ ring }: { ring: DashboardRing }) {
  const members = [...ring.members].sort((a, b) => a.position - b.position)
  const slots = Math.max(members.length, ...members.map((m) => m.position + 1), 1)
  const step = 360 / slots
  return (
    <svg
      class="ring-svg"
      data-testid="ring-svg"
      viewBox={`0 0 ${WIDTH} ${HEIGHT}`}
      role="img"
      aria-label={`ring of ${members.length} members, epoch ${ring.epoch}`}
    >
      <circle class="ring-track" cx={CX} cy={CY} r={RADIUS} />
      {members.map((member) => {
        const angle = -90 + member.position * step
        const gap = slots === 1 ? GAP / 2 : GAP
        return (
          <path
            key={`arc-${member.nodeId}`}
            class={`ring-arc load-${member.shard?.load ?? 'none'}`}
            d={arc(angle + gap, angle + step - gap)}
          >
            <title>{describe(member)}</title>
          </path>
        )
      })}
      {members.map((member) => (
        <Member key={member.nodeId} member={member} angle={-90 + member.position * step} />
      ))}
      <text class="ring-center" x={CX} y={CY - 4} text-anchor="middle">
        {members.length} {members.length === 1 ? 'member' : 'members'}
      </text>
      <text class="ring-center muted" x={CX} y={CY + 14} text-anchor="middle">
        {ring.layers === null ? 'no model' : `${ring.layers} layers`}
      </text>
    </svg>
  )
}

function Member({ member, angle }: { member: DashboardMember; angle: number }) {
  const [x, y] = point(angle, RADIUS)
  const [lx, ly] = point(angle, LABEL_RADIUS)
  const cos = Math.cos((angle * Math.PI) / 180)
  const anchor = cos > 0.3 ? 'start' : cos < -0.3 ? 'end' : 'middle'
  // Labels above the ring grow upwards, the others downwards.
  const sin = Math.sin((angle * Math.PI) / 180)
  const top = sin < -0.5 ? ly - 16 : sin > 0.5 ? ly + 10 : ly - 3
  return (
    <g class={member.self ? 'ring-member self' : 'ring-member'}>
      <circle class={`ring-dot load-${member.shard?.load ?? 'none'}`} cx={x} cy={y} r={member.self ? 9 : 7}>
        <title>{describe(member)}</title>
      </circle>
      <text x={lx} y={top} text-anchor={anchor} class="ring-label">
        <tspan x={lx}>{shortNodeId(member.nodeId)}</tspan>
        <tspan x={lx} dy="15" class="muted">
          {member.shard === null ? 'no shard' : layerRange(member.shard.layers)}
        </tspan>
      </text>
    </g>
  )
}

function describe(member: DashboardMember): string {
  const who = member.self ? `${member.nodeId} (this node)` : member.nodeId
  const shard =
    member.shard === null ? 'no shard' : `${layerRange(member.shard.layers)}, ${member.shard.load}`
  return `${who}, position ${member.position}: ${shard}`
}

function point(angle: number, radius: number): [number, number] {
  const rad = (angle * Math.PI) / 180
  return [round(CX + radius * Math.cos(rad)), round(CY + radius * Math.sin(rad))]
}

function arc(from: number, to: number): string {
  const [x1, y1] = point(from, RADIUS)
  const [x2, y2] = point(to, RADIUS)
  const large = to - from > 180 ? 1 : 0
  return `M ${x1} ${y1} A ${RADIUS} ${RADIUS} 0 ${large} 1 ${x2} ${y2}`
}

function round(value: number): number {
  return Math.round(value * 10) / 10
}
