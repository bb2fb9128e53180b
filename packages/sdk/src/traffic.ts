import type {
  Counter,
  CounterGroup,
  Histogram,
  HistogramGroup,
  Metric,
  MetricGroup,
  Metrics,
  MultiaddrConnection,
  Stream,
  Summary,
  SummaryGroup,
} from '@libp2p/interface'

/** Bytes one way and the other. */
export interface ByteCounts {
  sent: number
  received: number
}

/** Limits on the bytes the SDK's node moves (`p2pConfig.connectionManager`). */
export interface TrafficLimits {
  maxData?: number | undefined
  maxSentData?: number | undefined
  maxReceivedData?: number | undefined
}

export interface TrafficMetricsInit {
  limits: TrafficLimits
  /** Called once, when a limit is passed, with the limit's name. */
  onLimit(limit: keyof TrafficLimits, totals: ByteCounts): void
}

type Calculated = () => unknown

/**
 * A libp2p `Metrics` that counts bytes: on the wire for every connection (noise and yamux framing
 * included) and per negotiated protocol (application bytes). Other libp2p metrics are kept as plain
 * numbers, and calculated ones are read on demand. `@libp2p/simple-metrics` still targets libp2p 2
 * streams, hence this one; it counts the same way `@libp2p/prometheus-metrics` does.
 */
export class TrafficMetrics implements Metrics {
  readonly totals: ByteCounts = { sent: 0, received: 0 }
  readonly protocols = new Map<string, ByteCounts>()
  /** Open connections by remote address. */
  readonly connections = new Map<string, ByteCounts>()
  readonly #values = new Map<string, { value: number } | { values: Record<string, number> }>()
  readonly #calculated = new Map<string, Calculated>()
  readonly #init: TrafficMetricsInit
  #limitHit = false

  constructor(init: TrafficMetricsInit) {
    this.#init = init
  }

  trackMultiaddrConnection(maConn: MultiaddrConnection): void {
    const key = maConn.remoteAddr.toString()
    const counts: ByteCounts = { sent: 0, received: 0 }
    this.connections.set(key, counts)
    maConn.addEventListener('close', () => this.connections.delete(key), { once: true })
    this.#wrap(maConn, (sent, received) => {
      counts.sent += sent
      counts.received += received
      this.totals.sent += sent
      this.totals.received += received
      this.#checkLimits()
    })
  }

  trackProtocolStream(stream: Stream): void {
    if (!stream.protocol) return
    const counts = this.protocols.get(stream.protocol) ?? { sent: 0, received: 0 }
    this.protocols.set(stream.protocol, counts)
    this.#wrap(stream, (sent, received) => {
      counts.sent += sent
      counts.received += received
    })
  }

  /** Every other metric libp2p registered, with calculated ones read now. */
  async snapshot(): Promise<Record<string, unknown>> {
    const out: Record<string, unknown> = {}
    for (const [name, holder] of this.#values)
      out[name] = 'value' in holder ? holder.value : { ...holder.values }
    for (const [name, calculate] of this.#calculated) {
      try {
        out[name] = await calculate()
      } catch {}
    }
    return out
  }

  registerMetric(name: string, options?: { calculate?: Calculated }): Metric {
    return this.#single(name, options)
  }
  registerCounter(name: string, options?: { calculate?: Calculated }): Counter {
    return this.#single(name, options)
  }
  registerHistogram(name: string, options?: { calculate?: Calculated }): Histogram {
    return this.#single(name, options)
  }
  registerSummary(name: string, options?: { calculate?: Calculated }): Summary {
    return this.#single(name, options)
  }
  registerMetricGroup(name: string, options?: { calculate?: Calculated }): MetricGroup {
    return this.#group(name, options)
  }
  registerCounterGroup(name: string, options?: { calculate?: Calculated }): CounterGroup {
    return this.#group(name, options)
  }
  registerHistogramGroup(name: string, options?: { calculate?: Calculated }): HistogramGroup {
    return this.#group(name, options)
  }
  registerSummaryGroup(name: string, options?: { calculate?: Calculated }): SummaryGroup {
    return this.#group(name, options)
  }

  // biome-ignore lint/suspicious/noExplicitAny: the Metrics interface types traced functions as any
  traceFunction<F extends (...args: any[]) => any>(_name: string, fn: F): F {
    return fn
  }

  createTrace(): undefined {
    return undefined
  }

  /** Counts what a stream sends and the messages it dispatches, without adding a listener. */
  #wrap(
    stream: Pick<Stream, 'send' | 'dispatchEvent'>,
    count: (sent: number, received: number) => void,
  ): void {
    const send = stream.send.bind(stream)
    stream.send = (data) => {
      count(data.byteLength, 0)
      return send(data)
    }
    const dispatch = stream.dispatchEvent.bind(stream)
    // A 'message' listener here would make the stream start delivering data before the protocol
    // handler is attached; wrapping dispatchEvent observes what is delivered anyway.
    stream.dispatchEvent = (event: Event) => {
      if (event.type === 'message')
        count(0, (event as Event & { data: { byteLength: number } }).data.byteLength)
      return dispatch(event)
    }
  }

  #checkLimits(): void {
    if (this.#limitHit) return
    const { limits } = this.#init
    const { sent, received } = this.totals
    const hit =
      limits.maxSentData !== undefined && sent > limits.maxSentData
        ? 'maxSentData'
        : limits.maxReceivedData !== undefined && received > limits.maxReceivedData
          ? 'maxReceivedData'
          : limits.maxData !== undefined && sent + received > limits.maxData
            ? 'maxData'
            : undefined
    if (hit === undefined) return
    this.#limitHit = true
    this.#init.onLimit(hit, { ...this.totals })
  }

  #single(name: string, options?: { calculate?: Calculated }): Metric & Counter & Histogram & Summary {
    if (options?.calculate) this.#calculated.set(name, options.calculate)
    const holder = { value: 0 }
    this.#values.set(name, holder)
    return {
      update: (value: number) => {
        holder.value = value
      },
      increment: (value = 1) => {
        holder.value += value
      },
      decrement: (value = 1) => {
        holder.value -= value
      },
      observe: (value: number) => {
        holder.value = value
      },
      reset: () => {
        holder.value = 0
      },
      timer: () => {
        const started = Date.now()
        return () => {
          holder.value = Date.now() - started
        }
      },
    }
  }

  #group(
    name: string,
    options?: { calculate?: Calculated },
  ): MetricGroup & CounterGroup & HistogramGroup & SummaryGroup {
    if (options?.calculate) this.#calculated.set(name, options.calculate)
    const holder: { values: Record<string, number> } = { values: {} }
    this.#values.set(name, holder)
    const add = (values: Record<string, number | true | undefined>, sign: number) => {
      for (const [key, value] of Object.entries(values)) {
        holder.values[key] = (holder.values[key] ?? 0) + sign * (typeof value === 'number' ? value : 1)
      }
    }
    return {
      update: (values: Record<string, number | undefined>) => {
        for (const [key, value] of Object.entries(values)) if (value !== undefined) holder.values[key] = value
      },
      increment: (values: Record<string, number | true | undefined>) => add(values, 1),
      decrement: (values: Record<string, number | true | undefined>) => add(values, -1),
      observe: (values: Record<string, number | undefined>) => {
        for (const [key, value] of Object.entries(values)) if (value !== undefined) holder.values[key] = value
      },
      reset: () => {
        holder.values = {}
      },
      timer: (key: string) => {
        const started = Date.now()
        return () => {
          holder.values[key] = Date.now() - started
        }
      },
    }
  }
}
