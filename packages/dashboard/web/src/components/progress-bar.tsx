import { percent } from '../format.ts'

/** A thin bar for `done` of `total` (bytes fetched, loaded, trust), with its figure as the tooltip. */
export function ProgressBar({
  done,
  total,
  label,
  tone = 'accent',
}: {
  done: number | null
  total: number | null
  label: string
  tone?: 'accent' | 'ok' | 'warn'
}) {
  const value = percent(done, total)
  return (
    <div
      class={`bar bar-${tone}`}
      role="progressbar"
      aria-label={label}
      aria-valuemin={0}
      aria-valuemax={100}
      aria-valuenow={Math.round(value)}
      title={label}
    >
      <span style={{ width: `${value}%` }} />
    </div>
  )
}
