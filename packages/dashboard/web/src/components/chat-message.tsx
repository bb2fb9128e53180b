import type { MeshnetMeta } from '../chat-api.ts'
import { formatMs, shortNodeId } from '../format.ts'

/** One turn of the conversation as the page keeps it. */
export interface Turn {
  role: 'user' | 'assistant'
  content: string
  /** Who ran the answer and how fast (assistant turns, once they finished). */
  meta: MeshnetMeta | null
  error: string | null
  stopped: boolean
}

export function ChatMessage({ turn, streaming }: { turn: Turn; streaming: boolean }) {
  if (turn.role === 'user') {
    return (
      <div class="message user" data-testid="chat-question">
        {turn.content}
      </div>
    )
  }
  return (
    <div class="message assistant">
      <div class="answer" data-testid="chat-answer" aria-busy={streaming}>
        {turn.content}
        {streaming && <span class="cursor" aria-hidden="true" />}
      </div>
      {turn.meta !== null && (
        <p class="meta" data-testid="chat-meta" title={turn.meta.members.join('\n')}>
          by {turn.meta.mode} on {turn.meta.members.map(shortNodeId).join(', ')} ·{' '}
          {turn.meta.tokensPerSecond.toFixed(1)} tok/s · TTFT {formatMs(turn.meta.timeToFirstTokenMs)}
        </p>
      )}
      {turn.stopped && <p class="meta muted">stopped</p>}
      {turn.error !== null && (
        <p class="error-text" data-testid="chat-error">
          {turn.error}
        </p>
      )}
    </div>
  )
}
