import type { JSX } from 'preact'
import { useCallback, useEffect, useState } from 'preact/hooks'
import { forgetToken, saveToken, takeToken } from './auth.ts'
import { ChatView } from './components/chat-view.tsx'
import { DashboardView } from './components/dashboard-view.tsx'
import { FailoverBanner } from './components/failover-banner.tsx'
import { TokenForm } from './components/token-form.tsx'
import { TopBar } from './components/top-bar.tsx'
import { useDashboard } from './use-dashboard.ts'
import { pathOf, type View, viewOf } from './view.ts'

/** The page: the token, the top bar and the view the path names (`/` the dashboard, `/chat` the chat). */
export function App() {
  const [token, setToken] = useState<string | null>(takeToken)
  const [refused, setRefused] = useState(false)
  const [view, setView] = useState<View>(() => viewOf(location.pathname))

  const onUnauthorized = useCallback(() => {
    forgetToken()
    setRefused(true)
    setToken(null)
  }, [])
  // Only the dashboard follows the events stream: each stream holds one of the few connections a
  // browser opens to a host (six), and the chat needs one per answer.
  const feed = useDashboard(view === 'dashboard' ? token : null, onUnauthorized)

  useEffect(() => {
    const onPop = () => setView(viewOf(location.pathname))
    addEventListener('popstate', onPop)
    return () => removeEventListener('popstate', onPop)
  }, [])

  useEffect(() => {
    document.title = view === 'chat' ? 'Meshnet chat' : 'Meshnet dashboard'
  }, [view])

  const navigate = (to: View) => {
    if (to === view) return
    history.pushState(null, '', pathOf(to))
    setView(to)
  }

  let content: JSX.Element
  if (token === null) {
    content = (
      <TokenForm
        refused={refused}
        onToken={(next) => {
          saveToken(next)
          setRefused(false)
          setToken(next)
        }}
      />
    )
  } else if (view === 'chat') content = <ChatView token={token} onUnauthorized={onUnauthorized} />
  else content = <DashboardView state={feed.state} />

  return (
    <>
      <TopBar
        view={view}
        navigate={navigate}
        node={feed.state?.node ?? null}
        connection={token === null || view !== 'dashboard' ? null : feed.connection}
      />
      {feed.failover !== null && view === 'dashboard' && <FailoverBanner notice={feed.failover} />}
      <main>{content}</main>
    </>
  )
}
