import type { DashboardState } from '../../../src/contract.ts'
import { formatBytes, percent } from '../format.ts'
import { ProgressBar } from './progress-bar.tsx'

/** The model this node serves, and how far its fetch from peers is when one runs. */
export function ModelPanel({ model }: { model: DashboardState['model'] }) {
  return (
    <section class="panel" data-testid="model">
      <h2>Model</h2>
      {model === null ? (
        <p class="muted">This node serves no model.</p>
      ) : (
        <>
          <p class="model-name" title={model.id}>
            {model.name}
          </p>
          <dl class="facts">
            <dt>Layers</dt>
            <dd>{model.layers ?? '–'}</dd>
            <dt>Size</dt>
            <dd>{formatBytes(model.bytes)}</dd>
          </dl>
          {model.fetch !== null && (
            <div class="fetch">
              <span>
                fetching from {model.fetch.sources} {model.fetch.sources === 1 ? 'peer' : 'peers'}:{' '}
                {formatBytes(model.fetch.doneBytes)} of {formatBytes(model.fetch.totalBytes)} (
                {Math.round(percent(model.fetch.doneBytes, model.fetch.totalBytes))}%)
              </span>
              <ProgressBar done={model.fetch.doneBytes} total={model.fetch.totalBytes} label="model fetch" />
            </div>
          )}
        </>
      )}
    </section>
  )
}
