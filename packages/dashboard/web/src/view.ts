/** The two pages of the app: the same index.html, picked by the path. */
export type View = 'dashboard' | 'chat'

export function viewOf(pathname: string): View {
  return pathname.replace(/\/+$/, '') === '/chat' ? 'chat' : 'dashboard'
}

export function pathOf(view: View): string {
  return view === 'chat' ? '/chat' : '/'
}
