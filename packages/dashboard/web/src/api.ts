/** The agent refused the token (401): the page asks for another one. */
export class Unauthorized extends Error {
  override name = 'Unauthorized' as const
}

/** A request to the agent with the bearer token; throws `Unauthorized` on a 401. */
export async function agentFetch(path: string, token: string, init: RequestInit = {}): Promise<Response> {
  const headers = new Headers(init.headers)
  headers.set('authorization', `Bearer ${token}`)
  const res = await fetch(path, { ...init, headers })
  if (res.status === 401) {
    await res.body?.cancel()
    throw new Unauthorized('the agent refused the token')
  }
  return res
}

/** The message of an error answer: OpenAI's and the dashboard's `{error: {message}}`, or the status. */
export async function errorMessage(res: Response): Promise<string> {
  const text = await res.text().catch(() => '')
  try {
    const body = JSON.parse(text) as { error?: { message?: unknown } }
    if (typeof body.error?.message === 'string') return body.error.message
  } catch {
    // Not JSON: the text itself, when short, says more than the status alone.
  }
  const detail = text.trim().slice(0, 200)
  return `${res.status} ${res.statusText}${detail === '' ? '' : `: ${detail}`}`
}
