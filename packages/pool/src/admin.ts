import { InvalidArgumentError } from '@meshnet/core'
import { writeFileAtomic } from '@meshnet/identity'
import {
  type CreatedJoinToken,
  DEFAULT_JOIN_TOKEN_TTL_MS,
  FILE_VERSION,
  type JoinDecision,
  type JoinQueueDropReason,
  type JoinQueueStats,
  type JoinTokenInfo,
  MAX_PENDING_JOIN_REQUESTS,
  MAX_PENDING_JOIN_REQUESTS_PER_SOURCE,
  type PendingJoinRequest,
  type PendingRecord,
  pendingFileSchema,
  RETENTION_MS,
  type SignedJoinResponse,
  SOURCE_CHARS,
  type TokenRecord,
  tokenState,
  tokensFileSchema,
} from './admin-records.ts'
import {
  type Certificate,
  issueCertificate,
  type PoolRole,
  type PoolSigner,
  verifyCertificate,
} from './certificate.ts'
import { bytesEqual, formatTime, shortNodeId } from './encoding.ts'
import {
  CertificateError,
  type JoinRefusalReason,
  type JoinRequestError,
  NotPoolAdminError,
  refusalText,
} from './errors.ts'
import { jsonText, parseJsonFile, readIfPresent, withFileLock } from './files.ts'
import {
  encodeJoinResponse,
  generateJoinToken,
  JOIN_REQUEST_MAX_AGE_MS,
  type JoinOutcome,
  type JoinRequest,
  joinRequestSignatureValid,
  joinRequestTokenValid,
  parseJoinRequest,
  signJoinResponse,
} from './join.ts'
import type { ReplayCache } from './replay-cache.ts'
import { createRevocationList, encodeRevocationList, type RevocationList } from './revocation.ts'
import {
  listMembers,
  loadRevocationList,
  type Pool,
  poolFile,
  recordMember,
  saveRevocationList,
} from './store.ts'

/**
 * The admin side of one pool: join tokens, join requests (decide, approve, deny), certificates and
 * revocation. Open it with {@link openPoolAdmin}; one instance per pool per process (its changes to
 * the pool's files are serialised within the instance).
 */
export class PoolAdmin {
  readonly pool: Pool
  /** True on the node holding the pool root key; false on a delegated admin. */
  readonly holdsRootKey: boolean
  readonly replayCache: ReplayCache
  readonly #signer: PoolSigner
  readonly #clockSkewMs: number
  readonly #certificateTtlMs: number
  #queue: Promise<unknown> = Promise.resolve()

  /** Use {@link openPoolAdmin}. */
  constructor(
    pool: Pool,
    signer: PoolSigner,
    holdsRootKey: boolean,
    replayCache: ReplayCache,
    clockSkewMs: number,
    certificateTtlMs: number,
  ) {
    this.pool = pool
    this.#signer = signer
    this.holdsRootKey = holdsRootKey
    this.replayCache = replayCache
    this.#clockSkewMs = clockSkewMs
    this.#certificateTtlMs = certificateTtlMs
  }

  // ---- join tokens ----

  /** Creates a join token. Default: 24 hours, single use, role member. */
  async createJoinToken(
    options: { ttlMs?: number; singleUse?: boolean; role?: 'member' | 'client'; now?: number } = {},
  ): Promise<CreatedJoinToken> {
    const now = options.now ?? Date.now()
    const ttlMs = options.ttlMs ?? DEFAULT_JOIN_TOKEN_TTL_MS
    if (!Number.isSafeInteger(ttlMs) || ttlMs <= 0) {
      throw new InvalidArgumentError(
        `join token lifetime must be a positive number of milliseconds, got ${ttlMs}`,
      )
    }
    const { token, tokenId, publicKey } = generateJoinToken(this.pool.id)
    const record: TokenRecord = {
      id: tokenId,
      publicKey: Buffer.from(publicKey).toString('base64'),
      role: options.role ?? 'member',
      createdAt: now,
      expiresAt: now + ttlMs,
      singleUse: options.singleUse ?? true,
      usedBy: [],
    }
    await this.#exclusive(() => this.#updateTokens(now, (tokens) => [...tokens, record]))
    const { usedBy: _usedBy, publicKey: _publicKey, id: _id, ...info } = record
    return { token, tokenId, ...info }
  }

  /** Join tokens issued here (without secrets), newest first. */
  async listJoinTokens(options: { now?: number } = {}): Promise<JoinTokenInfo[]> {
    const now = options.now ?? Date.now()
    const tokens = await this.#readTokens()
    return tokens
      .map((t) => ({
        tokenId: t.id,
        role: t.role,
        createdAt: t.createdAt,
        expiresAt: t.expiresAt,
        singleUse: t.singleUse,
        usedBy: t.usedBy,
        state: tokenState(t, now),
      }))
      .sort((a, b) => b.createdAt - a.createdAt)
  }

  /** Withdraws a join token before it expires. Returns false when there is no such token. */
  async revokeJoinToken(tokenId: string, options: { now?: number } = {}): Promise<boolean> {
    const now = options.now ?? Date.now()
    let found = false
    await this.#exclusive(() =>
      this.#updateTokens(now, (tokens) => {
        found = tokens.some((t) => t.id === tokenId)
        return tokens.filter((t) => t.id !== tokenId)
      }),
    )
    return found
  }

  // ---- join requests ----

  /**
   * Decides about a join request from untrusted bytes, in this order: not a request (dropped),
   * wrong pool, bad signature, stale (older than 5 minutes or more than the clock skew in the
   * future), replayed nonce, revoked device; then a known member is renewed, a valid join token
   * gets a certificate (wrong, expired or used tokens are refused), a denied device is refused, and
   * anything else waits for approval (`mesh pool-approve`) when the queue has room: at most
   * {@link MAX_PENDING_JOIN_REQUESTS} wait, at most {@link MAX_PENDING_JOIN_REQUESTS_PER_SOURCE} of
   * them from one `source` (the sender's address). A new request finding no room is `not-queued`:
   * the ones waiting stay, and the caller counts it (see also {@link PoolAdmin.joinQueueStats}).
   */
  async handleJoinRequest(
    bytes: Uint8Array,
    options: { now?: number; source?: string } = {},
  ): Promise<JoinDecision> {
    const now = options.now ?? Date.now()
    const { source } = options
    if (source !== undefined && source.length > SOURCE_CHARS) {
      throw new InvalidArgumentError(`join request source is longer than ${SOURCE_CHARS} characters`)
    }
    let request: JoinRequest
    try {
      request = parseJoinRequest(bytes)
    } catch (err) {
      return { outcome: 'dropped', error: err as JoinRequestError }
    }
    const refuse = (reason: JoinRefusalReason): JoinDecision => ({
      outcome: 'refused',
      reason,
      request,
      ...this.#respond(request, { outcome: 'refused', reason }, now),
    })
    if (request.poolId !== this.pool.id) return refuse('wrong-pool')
    if (!joinRequestSignatureValid(request)) return refuse('bad-signature')
    if (now - request.createdAt > JOIN_REQUEST_MAX_AGE_MS || request.createdAt - now > this.#clockSkewMs) {
      return refuse('stale-request')
    }
    const replayKey = `${request.nodeId}/${Buffer.from(request.nonce).toString('hex')}`
    if (!this.replayCache.checkAndRemember(replayKey, now)) return refuse('replayed')

    return this.#exclusive(async () => {
      const revocations = await loadRevocationList(this.pool)
      if (revocations?.nodeIds.includes(request.nodeId)) return refuse('revoked')

      const member = (await listMembers(this.pool)).find((m) => m.nodeId === request.nodeId)
      if (member !== undefined && !revocations?.serials.includes(member.serial)) {
        if (member.role !== 'admin' || this.holdsRootKey) {
          return this.#accept(request, member.role, now)
        }
      }

      if (request.tokenPublicKey !== undefined) {
        const tokenKey = request.tokenPublicKey
        const tokens = await this.#readTokens()
        const token = tokens.find((t) =>
          bytesEqual(new Uint8Array(Buffer.from(t.publicKey, 'base64')), tokenKey),
        )
        if (token === undefined || !joinRequestTokenValid(request, tokenKey)) return refuse('bad-token')
        const state = tokenState(token, now)
        if (state === 'expired') return refuse('token-expired')
        if (state === 'used') return refuse('token-used')
        await this.#updateTokens(now, (all) =>
          all.map((t) =>
            t.id === token.id ? { ...t, usedBy: [...t.usedBy, { nodeId: request.nodeId, at: now }] } : t,
          ),
        )
        return this.#accept(request, token.role, now)
      }

      const pending = await this.#readPending()
      const previous = pending.find((p) => p.nodeId === request.nodeId)
      if (previous?.status === 'denied') return refuse('denied')
      // A device asking again keeps its place; a new one needs room.
      const full = previous === undefined ? queueFull(pending, source, now) : undefined
      if (full !== undefined) return { outcome: 'not-queued', reason: full, request }
      await this.#updatePending(now, (all) => [
        ...all.filter((p) => p.nodeId !== request.nodeId),
        {
          nodeId: request.nodeId,
          deviceName: request.deviceName,
          status: 'pending',
          receivedAt: now,
          ...(source === undefined ? {} : { source }),
          request: Buffer.from(bytes).toString('base64'),
        },
      ])
      return { outcome: 'pending', request, ...this.#respond(request, { outcome: 'pending' }, now) }
    })
  }

  /** Join requests waiting for approval, and denied ones, oldest first. */
  async listPendingJoinRequests(): Promise<PendingJoinRequest[]> {
    return (await this.#readPending()).map(({ request: _request, ...rest }) => rest)
  }

  /** How full the join queue is, and its limits. */
  async joinQueueStats(options: { now?: number } = {}): Promise<JoinQueueStats> {
    const now = options.now ?? Date.now()
    return {
      waiting: waitingRequests(await this.#readPending(), now).length,
      capacity: MAX_PENDING_JOIN_REQUESTS,
      perSource: MAX_PENDING_JOIN_REQUESTS_PER_SOURCE,
    }
  }

  /**
   * Approves a pending (or earlier denied) join request: issues the certificate and returns the
   * signed acceptance for the device. The device also receives it when it asks again.
   */
  async approveJoinRequest(
    nodeId: string,
    options: { role?: PoolRole; ttlMs?: number; now?: number } = {},
  ): Promise<{ certificate: Certificate } & SignedJoinResponse> {
    const now = options.now ?? Date.now()
    return this.#exclusive(async () => {
      const request = await this.#pendingRequest(nodeId)
      const decision = await this.#accept(request, options.role ?? 'member', now, options.ttlMs)
      return {
        certificate: decision.certificate,
        response: decision.response,
        responseBytes: decision.responseBytes,
      }
    })
  }

  /** Denies a join request: the device is refused ('denied') until approved or given a token. */
  async denyJoinRequest(nodeId: string, options: { now?: number } = {}): Promise<SignedJoinResponse> {
    const now = options.now ?? Date.now()
    return this.#exclusive(async () => {
      const request = await this.#pendingRequest(nodeId)
      await this.#updatePending(now, (all) =>
        all.map((p) => (p.nodeId === nodeId ? { ...p, status: 'denied' as const, decidedAt: now } : p)),
      )
      return this.#respond(request, { outcome: 'refused', reason: 'denied' }, now)
    })
  }

  // ---- certificates and revocation ----

  /** Issues and records a certificate for a device key directly (no join request). */
  async issueCertificate(options: {
    devicePublicKey: Uint8Array
    role: PoolRole
    ttlMs?: number
    deviceName?: string
    now?: number
  }): Promise<Certificate> {
    const now = options.now ?? Date.now()
    return this.#exclusive(async () => {
      this.#checkSigner(now)
      const cert = issueCertificate(this.#signer, {
        poolId: this.pool.id,
        devicePublicKey: options.devicePublicKey,
        role: options.role,
        issuedAt: now,
        ttlMs: options.ttlMs ?? this.#certificateTtlMs,
      })
      await recordMember(this.pool, cert, {
        now,
        ...(options.deviceName ? { deviceName: options.deviceName } : {}),
      })
      return cert
    })
  }

  /**
   * Adds serials and/or node ids to the pool's revocation list and signs the next version.
   * Only the root holder can: delegated admins get NotPoolAdminError. Gossip the returned bytes.
   */
  async revoke(options: {
    serials?: readonly string[]
    nodeIds?: readonly string[]
    now?: number
  }): Promise<{ list: RevocationList; bytes: Uint8Array }> {
    if (!this.holdsRootKey) {
      throw new NotPoolAdminError(`only the node holding the root key of pool ${this.pool.id} can revoke`, {
        hint: 'run mesh pool-revoke on the node that created the pool',
      })
    }
    const now = options.now ?? Date.now()
    return this.#exclusive(async () => {
      const current = await loadRevocationList(this.pool)
      const list = createRevocationList(this.#signer, {
        poolId: this.pool.id,
        version: (current?.version ?? 0) + 1,
        serials: [...(current?.serials ?? []), ...(options.serials ?? [])],
        nodeIds: [...(current?.nodeIds ?? []), ...(options.nodeIds ?? [])],
        issuedAt: now,
      })
      await saveRevocationList(this.pool, list)
      return { list, bytes: encodeRevocationList(list) }
    })
  }

  // ---- internals ----

  /** A delegated admin whose own certificate has lapsed must not issue certificates nobody accepts. */
  #checkSigner(now: number): void {
    const own = this.#signer.certificate
    if (own === undefined) return
    try {
      verifyCertificate(own, {
        poolId: this.pool.id,
        rootPublicKey: this.pool.rootPublicKey,
        now,
        clockSkewMs: this.#clockSkewMs,
      })
    } catch (err) {
      throw new NotPoolAdminError(
        `this node's admin certificate for pool ${this.pool.id} is no longer valid`,
        {
          cause: err,
          hint: 'renew it by asking the root holder again (mesh pool-join), then reopen the pool',
        },
      )
    }
  }

  async #accept(
    request: JoinRequest,
    role: PoolRole,
    now: number,
    ttlMs?: number,
  ): Promise<{ outcome: 'accepted'; request: JoinRequest; certificate: Certificate } & SignedJoinResponse> {
    this.#checkSigner(now)
    const certificate = issueCertificate(this.#signer, {
      poolId: this.pool.id,
      devicePublicKey: request.devicePublicKey,
      role,
      issuedAt: now,
      ttlMs: ttlMs ?? this.#certificateTtlMs,
    })
    try {
      await recordMember(this.pool, certificate, { now, deviceName: request.deviceName })
    } catch (err) {
      if (err instanceof CertificateError && err.reason === 'revoked') {
        throw new InvalidArgumentError(`node ${request.nodeId} is revoked from pool ${this.pool.id}`, {
          cause: err,
        })
      }
      throw err
    }
    await this.#updatePending(now, (all) => all.filter((p) => p.nodeId !== request.nodeId))
    return {
      outcome: 'accepted',
      request,
      certificate,
      ...this.#respond(request, { outcome: 'accepted', certificate }, now),
    }
  }

  #respond(request: JoinRequest, outcome: JoinOutcome, now: number): SignedJoinResponse {
    const response = signJoinResponse(this.#signer, {
      pool: this.pool,
      request,
      outcome,
      message: this.#message(request, outcome),
      now,
    })
    return { response, responseBytes: encodeJoinResponse(response) }
  }

  #message(request: JoinRequest, outcome: JoinOutcome): string {
    switch (outcome.outcome) {
      case 'accepted':
        return `welcome to pool ${this.pool.name} (${this.pool.id}) as ${outcome.certificate.role}; certificate valid until ${formatTime(outcome.certificate.expiresAt)}`
      case 'pending':
        return `waiting for the admin of pool ${this.pool.name} to approve ${shortNodeId(request.nodeId)} (mesh pool-approve)`
      case 'refused': {
        const { text, hint } = refusalText(outcome.reason, this.pool.id)
        return `${text}; ${hint}`
      }
    }
  }

  async #pendingRequest(nodeId: string): Promise<JoinRequest> {
    const entry = (await this.#readPending()).find((p) => p.nodeId === nodeId)
    if (entry === undefined) {
      throw new InvalidArgumentError(`no join request from ${nodeId} is waiting in pool ${this.pool.id}`, {
        hint: 'the device may need to ask again (mesh pool-join)',
      })
    }
    return parseJoinRequest(new Uint8Array(Buffer.from(entry.request, 'base64')))
  }

  #exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#queue.then(fn, fn)
    this.#queue = run.then(
      () => undefined,
      () => undefined,
    )
    return run
  }

  async #readTokens(): Promise<TokenRecord[]> {
    const path = poolFile(this.pool, 'tokens')
    const data = await readIfPresent(path)
    return data === undefined ? [] : parseJsonFile(path, data.toString('utf8'), tokensFileSchema).tokens
  }

  async #updateTokens(now: number, change: (tokens: TokenRecord[]) => TokenRecord[]): Promise<void> {
    const path = poolFile(this.pool, 'tokens')
    await withFileLock(path, async () => {
      const tokens = change(await this.#readTokens()).filter((t) => t.expiresAt + RETENTION_MS > now)
      await writeFileAtomic(path, jsonText({ version: FILE_VERSION, tokens }), { mode: 0o600 })
    })
  }

  async #readPending(): Promise<PendingRecord[]> {
    const path = poolFile(this.pool, 'pending')
    const data = await readIfPresent(path)
    return data === undefined ? [] : parseJsonFile(path, data.toString('utf8'), pendingFileSchema).requests
  }

  async #updatePending(now: number, change: (requests: PendingRecord[]) => PendingRecord[]): Promise<void> {
    const path = poolFile(this.pool, 'pending')
    await withFileLock(path, async () => {
      const kept = change(await this.#readPending())
        .filter((p) => (p.decidedAt ?? p.receivedAt) + RETENTION_MS > now)
        .sort((a, b) => a.receivedAt - b.receivedAt)
      // handleJoinRequest keeps the queue within bounds; should two processes both add, the oldest stay.
      const drop = new Set(kept.filter((p) => p.status === 'pending').slice(MAX_PENDING_JOIN_REQUESTS))
      const requests = kept.filter((p) => !drop.has(p))
      await writeFileAtomic(path, jsonText({ version: FILE_VERSION, requests }), { mode: 0o600 })
    })
  }
}

function waitingRequests(pending: readonly PendingRecord[], now: number): PendingRecord[] {
  return pending.filter((p) => p.status === 'pending' && p.receivedAt + RETENTION_MS > now)
}

/** Why a new request from `source` finds no room in the join queue, or undefined when it fits. */
function queueFull(
  pending: readonly PendingRecord[],
  source: string | undefined,
  now: number,
): JoinQueueDropReason | undefined {
  const waiting = waitingRequests(pending, now)
  if (
    source !== undefined &&
    waiting.filter((p) => p.source === source).length >= MAX_PENDING_JOIN_REQUESTS_PER_SOURCE
  ) {
    return 'source-full'
  }
  return waiting.length >= MAX_PENDING_JOIN_REQUESTS ? 'queue-full' : undefined
}
