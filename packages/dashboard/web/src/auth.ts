/** Where the token lives for this tab: it survives a reload and the switch to the chat page. */
const STORAGE_KEY = 'meshnet.dashboard.token'

/**
 * The token to send: one from the URL's `#token=<t>` fragment (the link `mesh dashboard` prints),
 * which is then stored for the tab and removed from the address bar, or the stored one.
 */
export function takeToken(): string | null {
  const fragment = new URLSearchParams(location.hash.replace(/^#/, ''))
  const fromUrl = fragment.get('token')
  if (fromUrl !== null) {
    history.replaceState(history.state, '', location.pathname + location.search)
    if (fromUrl !== '') saveToken(fromUrl)
  }
  return sessionStorage.getItem(STORAGE_KEY)
}

export function saveToken(token: string): void {
  sessionStorage.setItem(STORAGE_KEY, token)
}

export function forgetToken(): void {
  sessionStorage.removeItem(STORAGE_KEY)
}
