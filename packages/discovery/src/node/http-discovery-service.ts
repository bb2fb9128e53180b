import { request as httpRequest, type IncomingMessage } from 'node:http'
import { request as httpsRequest } from 'node:https'
import {
  type Logger,
  type PeerDiscoveryEvents,
  peerDiscoverySymbol,
  type Startable,
  serviceCapabilities,
  TypedEventEmitter,
} from '@libp2p/interface'
import { deadline } from './deadline.ts'
import type {
  HttpDiscoveryDropReason,
  HttpPeerDiscovery,
  HttpPeerDiscoveryComponents,
  HttpPeerDiscoveryStats,
  ResolvedHttpPeerDiscoveryInit,
} from './http-discovery.ts'
import { parsePeerList } from './http-discovery-peers.ts'

/** A request that failed as a whole, with the reason it is counted under. */
class FetchFailure extends Error {
  readonly reason: HttpDiscoveryDropReason
  constructor(reason: HttpDiscoveryDropReason, message: string) {
    super(message)
    this.reason = reason
  }
}

export class HttpPeerDiscoveryService
  extends TypedEventEmitter<PeerDiscoveryEvents>
  implements HttpPeerDiscovery, Startable
{
  readonly endpoint: string
  readonly #components: HttpPeerDiscoveryComponents
  readonly #init: ResolvedHttpPeerDiscoveryInit
  readonly #log: Logger
  readonly #stats: HttpPeerDiscoveryStats = {
    requests: 0,
    responses: 0,
    peers: 0,
    dropped: {},
    lastError: undefined,
  }
  #running: AbortController | undefined
  #timer: NodeJS.Timeout | undefined

  constructor(components: HttpPeerDiscoveryComponents, init: ResolvedHttpPeerDiscoveryInit) {
    super()
    this.#components = components
    this.#init = init
    this.endpoint = init.endpoint
    this.#log = components.logger.forComponent(
      `meshnet:http-discovery${init.tag === undefined ? '' : `:${init.tag}`}`,
    )
  }

  readonly [peerDiscoverySymbol] = this
  readonly [Symbol.toStringTag] = '@meshnet/http-discovery'
  readonly [serviceCapabilities]: string[] = ['@libp2p/peer-discovery']

  isStarted(): boolean {
    return this.#running !== undefined
  }

  start(): void {
    if (this.#running !== undefined) return
    this.#running = new AbortController()
    this.#log('asking %s for peers every %d ms', this.endpoint, this.#init.intervalMs)
    this.#schedule(0)
  }

  stop(): void {
    this.#running?.abort(new DOMException('http peer discovery stopped', 'AbortError'))
    this.#running = undefined
    clearTimeout(this.#timer)
    this.#timer = undefined
  }

  stats(): HttpPeerDiscoveryStats {
    return { ...this.#stats, dropped: { ...this.#stats.dropped } }
  }

  async refresh(options: { signal?: AbortSignal } = {}): Promise<number> {
    const parent = options.signal ?? this.#running?.signal
    const limit = deadline(this.#init.timeoutMs, parent)
    this.#stats.requests++
    try {
      const body = await this.#fetch(limit.signal).catch((err: unknown) => {
        if (err instanceof FetchFailure) throw err
        if (limit.timedOut()) {
          throw new FetchFailure('timeout', `no complete answer within ${this.#init.timeoutMs} ms`)
        }
        if (parent?.aborted === true) throw err
        throw new FetchFailure('network', (err as Error).message)
      })
      const list = parsePeerList(body, this.#components.peerId, this.#init.maxPeers)
      if ('error' in list) {
        throw new FetchFailure(
          list.error,
          list.error === 'not-json' ? 'the answer is not JSON' : 'the answer is not a peer list',
        )
      }
      this.#stats.responses++
      this.#stats.lastError = undefined
      for (const [reason, count] of Object.entries(list.dropped)) {
        this.#count(reason as HttpDiscoveryDropReason, count)
        this.#log('dropped %d entries of %s: %s', count, this.endpoint, reason)
      }
      for (const peer of list.peers) {
        if (limit.signal.aborted) break
        this.#stats.peers++
        this.safeDispatchEvent('peer', { detail: peer })
      }
      return list.peers.length
    } catch (err) {
      if (err instanceof FetchFailure) {
        this.#count(err.reason)
        this.#stats.lastError = `${this.endpoint}: ${err.message}`
        this.#log.error('asking %s for peers failed: %s', this.endpoint, err.message)
      }
      throw err
    } finally {
      limit.clear()
    }
  }

  #count(reason: HttpDiscoveryDropReason, count = 1): void {
    this.#stats.dropped[reason] = (this.#stats.dropped[reason] ?? 0) + count
  }

  /** The next request `ms` from now; one at a time, the next timed from the end of the last. */
  #schedule(ms: number): void {
    const running = this.#running
    if (running === undefined) return
    this.#timer = setTimeout(() => {
      this.#timer = undefined
      void this.refresh({ signal: running.signal })
        .catch(() => {})
        .finally(() => {
          if (this.#running === running) this.#schedule(this.#init.intervalMs)
        })
    }, ms)
  }

  /** GET the endpoint; the body as text, at most maxResponseBytes, or a FetchFailure. */
  #fetch(signal: AbortSignal): Promise<string> {
    const url = new URL(this.endpoint)
    const request = url.protocol === 'https:' ? httpsRequest : httpRequest
    const max = this.#init.maxResponseBytes
    return new Promise<string>((resolve, reject) => {
      // No keep-alive agent: the socket closes with the answer, so stop() leaves nothing open.
      const req = request(url, {
        method: 'GET',
        agent: false,
        headers: { accept: 'application/json' },
        signal,
      })
      req.on('error', reject)
      req.on('response', (res: IncomingMessage) => {
        const fail = (reason: HttpDiscoveryDropReason, message: string) => {
          reject(new FetchFailure(reason, message))
          res.destroy()
          req.destroy()
        }
        if (res.statusCode !== 200) {
          fail('http-status', `answered HTTP ${res.statusCode}`)
          return
        }
        const declared = Number(res.headers['content-length'] ?? 0)
        if (declared > max) {
          fail('too-large', `the answer is ${declared} bytes, more than ${max}`)
          return
        }
        const chunks: Buffer[] = []
        let size = 0
        res.on('data', (chunk: Buffer) => {
          size += chunk.byteLength
          if (size > max) fail('too-large', `the answer passed ${max} bytes`)
          else chunks.push(chunk)
        })
        res.on('error', reject)
        res.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')))
      })
      req.end()
    })
  }
}
