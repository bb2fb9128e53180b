import { useEffect, useReducer, useRef, useState } from 'preact/hooks'
import type { DashboardJobEvent, DashboardState } from '../../src/contract.ts'
import { type Connection, followEvents } from './events.ts'
import { applyJobEvent } from './jobs.ts'

/** How long the failover banner stays up (the badge on the job stays). */
const BANNER_MS = 12_000

export interface FailoverNotice {
  jobId: string
  dead: string[]
  atToken: number
}

export interface DashboardFeed {
  /** The latest state with the job events since applied; null until the first state arrives. */
  state: DashboardState | null
  connection: Connection
  /** The latest failover, for a while after it happened. */
  failover: FailoverNotice | null
}

type Action = { type: 'state'; state: DashboardState } | { type: 'job'; event: DashboardJobEvent }

function reduce(state: DashboardState | null, action: Action): DashboardState | null {
  if (action.type === 'state') return action.state
  return state === null ? null : { ...state, jobs: applyJobEvent(state.jobs, action.event) }
}

/** The agent's state, live from one events stream while `token` is set. */
export function useDashboard(token: string | null, onUnauthorized: () => void): DashboardFeed {
  const [state, dispatch] = useReducer(reduce, null)
  const [connection, setConnection] = useState<Connection>({ status: 'connecting' })
  const [failover, setFailover] = useState<FailoverNotice | null>(null)
  const unauthorized = useRef(onUnauthorized)
  unauthorized.current = onUnauthorized

  useEffect(() => {
    if (token === null) return
    const controller = new AbortController()
    void followEvents(
      token,
      {
        state: (next) => dispatch({ type: 'state', state: next }),
        job: (event) => {
          dispatch({ type: 'job', event })
          if (event.type === 'members' && event.failover !== null) {
            setFailover({ jobId: event.jobId, dead: event.failover.dead, atToken: event.failover.atToken })
          }
        },
        connection: setConnection,
        unauthorized: () => unauthorized.current(),
      },
      controller.signal,
    )
    return () => controller.abort()
  }, [token])

  useEffect(() => {
    if (failover === null) return
    const timer = setTimeout(() => setFailover(null), BANNER_MS)
    return () => clearTimeout(timer)
  }, [failover])

  return { state, connection, failover }
}
