import { useEffect, useLayoutEffect, useRef, useState } from 'preact/hooks'
import { Unauthorized } from '../api.ts'
import { type ChatMessage as ApiMessage, listModels, streamChat } from '../chat-api.ts'
import { ChatMessage, type Turn } from './chat-message.tsx'

/** The chat page: a conversation with the model the agent serves, streamed as it is generated. */
export function ChatView({ token, onUnauthorized }: { token: string; onUnauthorized: () => void }) {
  const [models, setModels] = useState<string[] | null>(null)
  const [modelsError, setModelsError] = useState<string | null>(null)
  const [model, setModel] = useState('')
  const [turns, setTurns] = useState<Turn[]>([])
  const [input, setInput] = useState('')
  // As typed: a field being edited may be empty for a moment; read when a message is sent.
  const [maxTokens, setMaxTokens] = useState('128')
  const [temperature, setTemperature] = useState('0.7')
  const [running, setRunning] = useState<AbortController | null>(null)
  const end = useRef<HTMLDivElement>(null)
  const runningNow = useRef<AbortController | null>(null)
  runningNow.current = running

  useEffect(() => {
    const controller = new AbortController()
    listModels(token, controller.signal).then(
      (ids) => {
        setModels(ids)
        setModel((chosen) => (chosen !== '' && ids.includes(chosen) ? chosen : (ids[0] ?? '')))
      },
      (err: unknown) => {
        if (err instanceof Unauthorized) onUnauthorized()
        else if (!controller.signal.aborted) setModelsError(err instanceof Error ? err.message : String(err))
      },
    )
    return () => controller.abort()
  }, [token, onUnauthorized])

  // Leaving the page stops the answer being generated.
  useEffect(() => () => runningNow.current?.abort(), [])

  useLayoutEffect(() => end.current?.scrollIntoView({ block: 'end' }), [turns])

  const updateLast = (change: (turn: Turn) => Turn) =>
    setTurns((all) => all.map((turn, i) => (i === all.length - 1 ? change(turn) : turn)))

  const send = async () => {
    const question = input.trim()
    if (question === '' || model === '' || running !== null) return
    const messages: ApiMessage[] = [
      ...turns
        .filter((t) => t.error === null && t.content !== '')
        .map(({ role, content }) => ({ role, content })),
      { role: 'user', content: question },
    ]
    const controller = new AbortController()
    setInput('')
    setRunning(controller)
    setTurns((all) => [...all, turn('user', question), turn('assistant', '')])
    try {
      const meta = await streamChat(
        token,
        {
          model,
          messages,
          maxTokens: Math.round(numberIn(maxTokens, 1, 4096, 128)),
          temperature: numberIn(temperature, 0, 2, 0.7),
        },
        (text) => updateLast((last) => ({ ...last, content: last.content + text })),
        controller.signal,
      )
      updateLast((last) => ({ ...last, meta }))
    } catch (err) {
      if (err instanceof Unauthorized) onUnauthorized()
      else if (controller.signal.aborted) updateLast((last) => ({ ...last, stopped: true }))
      else updateLast((last) => ({ ...last, error: err instanceof Error ? err.message : String(err) }))
    } finally {
      setRunning(null)
    }
  }

  return (
    <section class="chat">
      <div class="panel chat-settings">
        <label>
          Model
          <select
            data-testid="model-select"
            value={model}
            onChange={(event) => setModel(event.currentTarget.value)}
            disabled={models === null || models.length === 0}
          >
            {models === null && <option value="">loading…</option>}
            {models?.length === 0 && <option value="">no model served</option>}
            {models?.map((id) => (
              <option key={id} value={id}>
                {id}
              </option>
            ))}
          </select>
        </label>
        <label>
          Max tokens
          <input
            type="number"
            min={1}
            max={4096}
            value={maxTokens}
            data-testid="chat-max-tokens"
            onInput={(event) => setMaxTokens(event.currentTarget.value)}
          />
        </label>
        <label>
          Temperature
          <input
            type="number"
            min={0}
            max={2}
            step={0.1}
            value={temperature}
            data-testid="chat-temperature"
            onInput={(event) => setTemperature(event.currentTarget.value)}
          />
        </label>
        {modelsError !== null && <p class="error-text">{modelsError}</p>}
      </div>
      <div class="panel messages" aria-live="polite">
        {turns.length === 0 && <p class="muted">Ask the ring something.</p>}
        {turns.map((t, i) => (
          <ChatMessage
            key={`${i}-${t.role}`}
            turn={t}
            streaming={running !== null && i === turns.length - 1}
          />
        ))}
        <div ref={end} />
      </div>
      <form
        class="panel chat-input"
        onSubmit={(event) => {
          event.preventDefault()
          void send()
        }}
      >
        <textarea
          data-testid="chat-input"
          rows={2}
          placeholder="Message (Enter sends, Shift+Enter for a new line)"
          value={input}
          onInput={(event) => setInput(event.currentTarget.value)}
          onKeyDown={(event) => {
            if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
              event.preventDefault()
              void send()
            }
          }}
        />
        {running === null ? (
          <button type="submit" data-testid="chat-send" disabled={model === ''}>
            Send
          </button>
        ) : (
          <button type="button" class="stop" data-testid="chat-stop" onClick={() => running.abort()}>
            Stop
          </button>
        )}
      </form>
    </section>
  )
}

function turn(role: Turn['role'], content: string): Turn {
  return { role, content, meta: null, error: null, stopped: false }
}

/** A number field's value, within [min, max]; `fallback` when it is empty or not a number. */
function numberIn(text: string, min: number, max: number, fallback: number): number {
  const value = Number.parseFloat(text)
  return Number.isFinite(value) ? Math.min(max, Math.max(min, value)) : fallback
}
