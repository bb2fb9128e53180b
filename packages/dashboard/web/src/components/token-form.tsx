import { useState } from 'preact/hooks'

/** Asks for the token when the page has none or the agent refused it. */
export function TokenForm({ refused, onToken }: { refused: boolean; onToken: (token: string) => void }) {
  const [value, setValue] = useState('')
  return (
    <form
      class="panel token-form"
      data-testid="token-form"
      onSubmit={(event) => {
        event.preventDefault()
        if (value.trim() !== '') onToken(value.trim())
      }}
    >
      <h2>Sign in to this agent</h2>
      <p>
        {refused ? 'The agent refused that token. ' : ''}Run <code>mesh dashboard</code> on this machine: it
        prints a link that opens this page signed in. Or paste the agent's API key or dashboard token:
      </p>
      <label>
        API key or dashboard token
        <input
          type="password"
          autocomplete="off"
          value={value}
          onInput={(event) => setValue(event.currentTarget.value)}
          data-testid="token-input"
        />
      </label>
      <button type="submit">Open</button>
    </form>
  )
}
