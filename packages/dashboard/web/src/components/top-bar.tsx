import type { DashboardState } from '../../../src/contract.ts'
import type { Connection } from '../events.ts'
import { shortNodeId } from '../format.ts'
import type { View } from '../view.ts'

const STATUS_TEXT = {
  connecting: 'connecting…',
  live: 'live',
  retrying: 'disconnected, retrying',
} as const

/** The bar above both pages: the node, links to the dashboard and the chat, the stream's status. */
export function TopBar({
  view,
  navigate,
  node,
  connection,
}: {
  view: View
  navigate: (view: View) => void
  node: DashboardState['node'] | null
  connection: Connection | null
}) {
  const link = (to: View, href: string, text: string) => (
    <a
      href={href}
      aria-current={view === to ? 'page' : undefined}
      onClick={(event) => {
        if (event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey) return
        event.preventDefault()
        navigate(to)
      }}
    >
      {text}
    </a>
  )
  return (
    <header class="top-bar">
      <strong class="brand">Meshnet</strong>
      {node !== null && (
        <span class="node" title={node.nodeId}>
          {node.name ?? shortNodeId(node.nodeId)} <span class="muted">v{node.version}</span>
        </span>
      )}
      <nav>
        {link('dashboard', '/', 'Dashboard')}
        {link('chat', '/chat', 'Chat')}
      </nav>
      {connection !== null && (
        <span
          class={`status status-${connection.status}`}
          data-testid="connection-status"
          title={connection.status === 'retrying' ? connection.reason : undefined}
        >
          {STATUS_TEXT[connection.status]}
        </span>
      )}
    </header>
  )
}
