import { mkdtemp, readFile, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import {
  generateIdentity,
  type NodeIdentity,
  publicKeyOfSeed,
  randomSeed,
  signWithSeed,
} from '@meshnet/identity'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import type { PoolAdmin } from '../src/admin.ts'
import {
  type JoinDecision,
  MAX_PENDING_JOIN_REQUESTS,
  MAX_PENDING_JOIN_REQUESTS_PER_SOURCE,
} from '../src/admin-records.ts'
import { DEFAULT_CERTIFICATE_TTL_MS, verifyCertificate } from '../src/certificate.ts'
import { CLOCK_SKEW_MS, encodeCanonical } from '../src/encoding.ts'
import { JoinRefusedError } from '../src/errors.ts'
import {
  createJoinRequest,
  decodeJoinResponse,
  encodeJoinRequest,
  generateJoinToken,
  JOIN_REQUEST_DOMAIN,
  JOIN_REQUEST_MAX_AGE_MS,
  JOIN_TOKEN_DOMAIN,
  type JoinRequest,
  joinRequestSigningBytes,
} from '../src/join.ts'
import { openPoolAdmin } from '../src/open-admin.ts'
import {
  createPool,
  listMembers,
  loadCertificate,
  loadPool,
  loadRevocationList,
  type Pool,
  saveJoinedPool,
} from '../src/store.ts'
import { T0 } from './fixtures.ts'

const MINUTE = 60_000

let root: string
beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'meshnet-pool-admin-'))
})
afterEach(async () => {
  await rm(root, { recursive: true, force: true })
})

async function setup(): Promise<{
  pool: Pool
  admin: PoolAdmin
  adminDir: string
  adminIdentity: NodeIdentity
}> {
  const adminDir = join(root, 'admin')
  const adminIdentity = generateIdentity()
  const { pool } = await createPool(adminDir, { name: 'lab', now: T0 }, adminIdentity)
  const admin = await openPoolAdmin(adminDir, pool.id, adminIdentity, { now: T0 })
  return { pool, admin, adminDir, adminIdentity }
}

function refusal(decision: JoinDecision): string {
  return decision.outcome === 'refused' ? decision.reason : decision.outcome
}

/** Re-signs a hand-modified request with the device key, as a forger holding their own key would. */
function resign(request: JoinRequest, device: NodeIdentity, tokenSeed?: Uint8Array): Uint8Array {
  const body = joinRequestSigningBytes(request)
  const signed: JoinRequest = { ...request, signature: device.sign(JOIN_REQUEST_DOMAIN, body) }
  if (tokenSeed !== undefined) signed.tokenSignature = signWithSeed(tokenSeed, JOIN_TOKEN_DOMAIN, body)
  return encodeJoinRequest(signed)
}

describe('joining with a token', () => {
  it('gives the device a certificate that it verifies and saves, and the admin stores no secret', async () => {
    const { pool, admin } = await setup()
    const created = await admin.createJoinToken({ ttlMs: 60 * MINUTE, singleUse: true, now: T0 })
    const device = generateIdentity()
    const { request, bytes } = createJoinRequest(device, {
      token: created.token,
      deviceName: 'laptop',
      now: T0,
    })

    const decision = await admin.handleJoinRequest(bytes, { now: T0 + 1000 })
    expect(decision.outcome).toBe('accepted')
    if (decision.outcome !== 'accepted') return
    expect(decision.certificate).toMatchObject({ nodeId: device.nodeId, role: 'member', poolId: pool.id })

    const response = decodeJoinResponse(decision.responseBytes, { request, now: T0 + 2000 })
    const memberDir = join(root, 'member')
    const joined = await saveJoinedPool(memberDir, response, { now: T0 + 2000 })
    expect(await loadPool(memberDir, pool.id)).toEqual({ ...pool, dir: joined.dir })
    const saved = await loadCertificate(joined)
    expect(saved).toEqual(decision.certificate)
    expect(() =>
      verifyCertificate(saved!, { poolId: pool.id, rootPublicKey: pool.rootPublicKey, now: T0 }),
    ).not.toThrow()

    const tokensFile = join(pool.dir, 'tokens.json')
    expect((await stat(tokensFile)).mode & 0o777).toBe(0o600)
    expect(await readFile(tokensFile, 'utf8')).not.toContain(created.token.split('.')[2])
    expect((await listMembers(pool)).map((m) => m.deviceName)).toContain('laptop')
  })

  it('refuses a wrong token: unknown to the pool, or a known token key without its secret', async () => {
    const { pool, admin } = await setup()
    const device = generateIdentity()
    const unknown = generateJoinToken(pool.id).token
    const withUnknown = createJoinRequest(device, { token: unknown, deviceName: 'x', now: T0 })
    expect(refusal(await admin.handleJoinRequest(withUnknown.bytes, { now: T0 }))).toBe('bad-token')

    // Someone overheard a genuine request and copies its token key, but cannot sign with the token.
    const real = await admin.createJoinToken({ now: T0 })
    const overheard = createJoinRequest(generateIdentity(), {
      token: real.token,
      deviceName: 'victim',
      now: T0,
    })
    const thief = generateIdentity()
    const stolen = createJoinRequest(thief, { token: unknown, deviceName: 'thief', now: T0 }).request
    const forged = resign(
      { ...stolen, tokenPublicKey: overheard.request.tokenPublicKey },
      thief,
      randomSeed(),
    )
    const decision = await admin.handleJoinRequest(forged, { now: T0 })
    expect(refusal(decision)).toBe('bad-token')
    // The refusal is signed by the pool and tells the device what to do.
    if (decision.outcome !== 'refused') return
    const seen = decodeJoinResponse(decision.responseBytes, { request: stolen, now: T0 })
    expect(seen).toMatchObject({ outcome: 'refused', reason: 'bad-token' })
    expect(new JoinRefusedError('bad-token', pool.id).message).toMatch(/ask the pool admin for a new one/)
  })

  it('refuses an expired token', async () => {
    const { admin } = await setup()
    const { token } = await admin.createJoinToken({ ttlMs: 10 * MINUTE, now: T0 })
    const later = T0 + 11 * MINUTE
    const { bytes } = createJoinRequest(generateIdentity(), { token, deviceName: 'x', now: later })
    expect(refusal(await admin.handleJoinRequest(bytes, { now: later }))).toBe('token-expired')
  })

  it('consumes a single-use token: a second device is refused, the first device may retry', async () => {
    const { admin } = await setup()
    const { token, tokenId } = await admin.createJoinToken({ singleUse: true, now: T0 })
    const first = generateIdentity()
    const second = generateIdentity()
    const a = createJoinRequest(first, { token, deviceName: 'first', now: T0 })
    expect((await admin.handleJoinRequest(a.bytes, { now: T0 })).outcome).toBe('accepted')
    const b = createJoinRequest(second, { token, deviceName: 'second', now: T0 })
    expect(refusal(await admin.handleJoinRequest(b.bytes, { now: T0 }))).toBe('token-used')
    // The first device lost the answer and asks again with a new request: it is a member now.
    const retry = createJoinRequest(first, { token, deviceName: 'first', now: T0 + MINUTE })
    expect((await admin.handleJoinRequest(retry.bytes, { now: T0 + MINUTE })).outcome).toBe('accepted')
    const [listed] = await admin.listJoinTokens({ now: T0 + MINUTE })
    expect(listed).toMatchObject({ tokenId, state: 'used', usedBy: [{ nodeId: first.nodeId, at: T0 }] })
  })

  it('lets a multi-use token admit several devices until it is withdrawn', async () => {
    const { admin } = await setup()
    const { token, tokenId } = await admin.createJoinToken({ singleUse: false, role: 'client', now: T0 })
    for (const name of ['a', 'b']) {
      const { bytes } = createJoinRequest(generateIdentity(), { token, deviceName: name, now: T0 })
      const decision = await admin.handleJoinRequest(bytes, { now: T0 })
      expect(decision.outcome === 'accepted' && decision.certificate.role).toBe('client')
    }
    expect(await admin.revokeJoinToken(tokenId, { now: T0 })).toBe(true)
    const { bytes } = createJoinRequest(generateIdentity(), { token, deviceName: 'c', now: T0 })
    expect(refusal(await admin.handleJoinRequest(bytes, { now: T0 }))).toBe('bad-token')
  })
})

describe('refusing join requests', () => {
  it('refuses a request whose signature is forged', async () => {
    const { pool, admin } = await setup()
    const victim = generateIdentity()
    const forger = generateIdentity()
    const { request } = createJoinRequest(forger, { poolId: pool.id, deviceName: 'x', now: T0 })
    const claiming = encodeJoinRequest({
      ...request,
      nodeId: victim.nodeId,
      devicePublicKey: victim.publicKey,
    })
    expect(refusal(await admin.handleJoinRequest(claiming, { now: T0 }))).toBe('bad-signature')
  })

  it('refuses a request older than 5 minutes, or from further in the future than the clock skew', async () => {
    const { pool, admin } = await setup()
    const at = (createdAt: number) =>
      createJoinRequest(generateIdentity(), { poolId: pool.id, deviceName: 'x', now: createdAt }).bytes
    expect(refusal(await admin.handleJoinRequest(at(T0 - JOIN_REQUEST_MAX_AGE_MS - 1), { now: T0 }))).toBe(
      'stale-request',
    )
    expect(refusal(await admin.handleJoinRequest(at(T0 + CLOCK_SKEW_MS + 1), { now: T0 }))).toBe(
      'stale-request',
    )
    expect((await admin.handleJoinRequest(at(T0 - JOIN_REQUEST_MAX_AGE_MS), { now: T0 })).outcome).toBe(
      'pending',
    )
    expect((await admin.handleJoinRequest(at(T0 + CLOCK_SKEW_MS), { now: T0 })).outcome).toBe('pending')
  })

  it('refuses a replayed request', async () => {
    const { pool, admin } = await setup()
    const { token } = await admin.createJoinToken({ singleUse: false, now: T0 })
    const { bytes } = createJoinRequest(generateIdentity(), {
      poolId: pool.id,
      token,
      deviceName: 'x',
      now: T0,
    })
    expect((await admin.handleJoinRequest(bytes, { now: T0 })).outcome).toBe('accepted')
    expect(refusal(await admin.handleJoinRequest(bytes, { now: T0 + 1000 }))).toBe('replayed')
  })

  it('refuses a request for another pool and drops bytes that are not a request', async () => {
    const { admin } = await setup()
    const other = await setup()
    const { bytes } = createJoinRequest(generateIdentity(), {
      poolId: other.pool.id,
      deviceName: 'x',
      now: T0,
    })
    expect(refusal(await admin.handleJoinRequest(bytes, { now: T0 }))).toBe('wrong-pool')
    const dropped = await admin.handleJoinRequest(encodeCanonical({ hello: 'world' }), { now: T0 })
    expect(dropped.outcome === 'dropped' && dropped.error.reason).toBe('malformed')
  })
})

describe('approval', () => {
  it('keeps a request without a token pending; once approved, the device gets its certificate', async () => {
    const { pool, admin } = await setup()
    const device = generateIdentity()
    const { request, bytes } = createJoinRequest(device, { poolId: pool.id, deviceName: 'desk', now: T0 })
    const pending = await admin.handleJoinRequest(bytes, { now: T0 })
    expect(pending.outcome).toBe('pending')
    if (pending.outcome !== 'pending') return
    expect(decodeJoinResponse(pending.responseBytes, { request, now: T0 }).outcome).toBe('pending')
    expect(await admin.listPendingJoinRequests()).toEqual([
      { nodeId: device.nodeId, deviceName: 'desk', status: 'pending', receivedAt: T0 },
    ])

    const approved = await admin.approveJoinRequest(device.nodeId, { role: 'member', now: T0 + 60 * MINUTE })
    expect(approved.certificate.nodeId).toBe(device.nodeId)
    // The stored request's answer is valid for the device (delivered if it still listens) ...
    expect(decodeJoinResponse(approved.responseBytes, { request, now: T0 + 60 * MINUTE }).outcome).toBe(
      'accepted',
    )
    expect(await admin.listPendingJoinRequests()).toEqual([])
    // ... and when it asks again it is accepted as a known member.
    const again = createJoinRequest(device, { poolId: pool.id, deviceName: 'desk', now: T0 + 61 * MINUTE })
    expect((await admin.handleJoinRequest(again.bytes, { now: T0 + 61 * MINUTE })).outcome).toBe('accepted')
  })

  it('refuses a denied device until the admin changes their mind', async () => {
    const { pool, admin } = await setup()
    const device = generateIdentity()
    const first = createJoinRequest(device, { poolId: pool.id, deviceName: 'x', now: T0 })
    await admin.handleJoinRequest(first.bytes, { now: T0 })
    const denied = await admin.denyJoinRequest(device.nodeId, { now: T0 })
    expect(decodeJoinResponse(denied.responseBytes, { request: first.request, now: T0 })).toMatchObject({
      outcome: 'refused',
      reason: 'denied',
    })
    const again = createJoinRequest(device, { poolId: pool.id, deviceName: 'x', now: T0 + MINUTE })
    expect(refusal(await admin.handleJoinRequest(again.bytes, { now: T0 + MINUTE }))).toBe('denied')
    expect((await admin.approveJoinRequest(device.nodeId, { now: T0 + 2 * MINUTE })).certificate.nodeId).toBe(
      device.nodeId,
    )
  })

  it('says clearly when there is nothing to approve', async () => {
    const { admin } = await setup()
    await expect(admin.approveJoinRequest(generateIdentity().nodeId, { now: T0 })).rejects.toMatchObject({
      name: 'InvalidArgumentError',
      message: expect.stringContaining('no join request from'),
    })
  })
})

describe('revocation', () => {
  it('refuses a revoked certificate and a revoked device asking again', async () => {
    const { pool, admin } = await setup()
    const device = generateIdentity()
    const cert = await admin.issueCertificate({ devicePublicKey: device.publicKey, role: 'member', now: T0 })
    const { list, bytes } = await admin.revoke({ nodeIds: [device.nodeId], now: T0 + MINUTE })
    expect(list.version).toBe(1)
    expect(bytes.length).toBeGreaterThan(0)
    const revocations = await loadRevocationList(pool)
    expect(revocations).toEqual(list)
    expect(() =>
      verifyCertificate(cert, { poolId: pool.id, rootPublicKey: pool.rootPublicKey, now: T0, revocations }),
    ).toThrow(expect.objectContaining({ reason: 'revoked' }))
    const again = createJoinRequest(device, { poolId: pool.id, deviceName: 'x', now: T0 + MINUTE })
    expect(refusal(await admin.handleJoinRequest(again.bytes, { now: T0 + MINUTE }))).toBe('revoked')

    // The next revocation keeps what was revoked and raises the version.
    const next = await admin.revoke({ serials: ['ab'.repeat(16)], now: T0 + 2 * MINUTE })
    expect(next.list).toMatchObject({ version: 2, nodeIds: [device.nodeId], serials: ['ab'.repeat(16)] })
  })
})

describe('delegated admins', () => {
  it('lets an admin certified by the root admit members, but not revoke or create admins', async () => {
    const { pool, admin } = await setup()
    // Device B joins and is approved as an admin by the root holder.
    const b = generateIdentity()
    const bDir = join(root, 'b')
    const bJoin = createJoinRequest(b, { poolId: pool.id, deviceName: 'b', now: T0 })
    await admin.handleJoinRequest(bJoin.bytes, { now: T0 })
    const approved = await admin.approveJoinRequest(b.nodeId, { role: 'admin', now: T0 })
    await saveJoinedPool(
      bDir,
      decodeJoinResponse(approved.responseBytes, { request: bJoin.request, now: T0 }),
      {
        now: T0,
      },
    )

    const delegated = await openPoolAdmin(bDir, pool.id, b, { now: T0 })
    expect(delegated.holdsRootKey).toBe(false)
    const { token } = await delegated.createJoinToken({ now: T0 })
    const c = generateIdentity()
    const cJoin = createJoinRequest(c, { token, deviceName: 'c', now: T0 })
    const decision = await delegated.handleJoinRequest(cJoin.bytes, { now: T0 })
    expect(decision.outcome).toBe('accepted')
    if (decision.outcome !== 'accepted') return
    const response = decodeJoinResponse(decision.responseBytes, { request: cJoin.request, now: T0 })
    expect(response.signerCertificate?.nodeId).toBe(b.nodeId)
    expect(decision.certificate.issuerCertificate?.nodeId).toBe(b.nodeId)
    expect(() =>
      verifyCertificate(decision.certificate, {
        poolId: pool.id,
        rootPublicKey: pool.rootPublicKey,
        now: T0,
      }),
    ).not.toThrow()

    await expect(delegated.revoke({ nodeIds: [c.nodeId], now: T0 })).rejects.toMatchObject({
      name: 'NotPoolAdminError',
    })
    await expect(
      delegated.issueCertificate({ devicePublicKey: generateIdentity().publicKey, role: 'admin', now: T0 }),
    ).rejects.toMatchObject({ name: 'InvalidArgumentError' })

    // Once its own admin certificate has lapsed, it stops issuing certificates nobody would accept.
    const late = T0 + DEFAULT_CERTIFICATE_TTL_MS + CLOCK_SKEW_MS + 1
    const { token: longToken } = await delegated.createJoinToken({
      ttlMs: 2 * DEFAULT_CERTIFICATE_TTL_MS,
      now: T0,
    })
    const d = createJoinRequest(generateIdentity(), { token: longToken, deviceName: 'd', now: late })
    await expect(delegated.handleJoinRequest(d.bytes, { now: late })).rejects.toMatchObject({
      name: 'NotPoolAdminError',
    })
  })

  it('refuses to open the admin side on a plain member', async () => {
    const { pool, admin } = await setup()
    const m = generateIdentity()
    const mJoin = createJoinRequest(m, { poolId: pool.id, deviceName: 'm', now: T0 })
    await admin.handleJoinRequest(mJoin.bytes, { now: T0 })
    const approved = await admin.approveJoinRequest(m.nodeId, { now: T0 })
    const mDir = join(root, 'm')
    await saveJoinedPool(
      mDir,
      decodeJoinResponse(approved.responseBytes, { request: mJoin.request, now: T0 }),
      {
        now: T0,
      },
    )
    await expect(openPoolAdmin(mDir, pool.id, m, { now: T0 })).rejects.toMatchObject({
      name: 'NotPoolAdminError',
      message: expect.stringContaining('it is a member certificate'),
    })
  })
})

describe('the root holder', () => {
  it('renews its own admin certificate when opening the admin side late in its life', async () => {
    const { pool, adminDir, adminIdentity } = await setup()
    const before = (await loadCertificate(pool))!
    await openPoolAdmin(adminDir, pool.id, adminIdentity, { now: T0 + DEFAULT_CERTIFICATE_TTL_MS / 2 })
    expect((await loadCertificate(pool))?.serial).toBe(before.serial)
    const late = T0 + DEFAULT_CERTIFICATE_TTL_MS - 1000
    await openPoolAdmin(adminDir, pool.id, adminIdentity, { now: late })
    const after = (await loadCertificate(pool))!
    expect(after.serial).not.toBe(before.serial)
    expect(after.issuedAt).toBe(late)
  })

  it('treats a root key that does not hash to the pool id as a caller error, not a certificate verdict', async () => {
    const { pool, admin } = await setup()
    const seed = randomSeed()
    expect(publicKeyOfSeed(seed)).not.toEqual(pool.rootPublicKey)
    // A certificate issued here never verifies under another root, even with this pool's id.
    const cert = await admin.issueCertificate({
      devicePublicKey: generateIdentity().publicKey,
      role: 'member',
      now: T0,
    })
    expect(() =>
      verifyCertificate(cert, { poolId: pool.id, rootPublicKey: publicKeyOfSeed(seed), now: T0 }),
    ).toThrow(expect.objectContaining({ name: 'InvalidArgumentError' }))
  })
})

describe('the join queue under a flood', () => {
  /** A join request without a token, from `device` (default: a fresh key). */
  const ask = (pool: Pool, deviceName: string, now = T0, device = generateIdentity()) => ({
    device,
    ...createJoinRequest(device, { poolId: pool.id, deviceName, now }),
  })

  it('keeps the waiting requests when fresh keys from one address flood it, and says why the flood was turned away', async () => {
    const { pool, admin } = await setup()
    const real = ['10.0.0.1', '10.0.0.2', '10.0.0.3'].map((source) => ({ source, ...ask(pool, source) }))
    for (const { bytes, source } of real) {
      expect((await admin.handleJoinRequest(bytes, { now: T0, source })).outcome).toBe('pending')
    }
    const flood: string[] = []
    for (let i = 0; i < 300; i++) {
      const { bytes } = ask(pool, `flood-${i}`)
      const decision = await admin.handleJoinRequest(bytes, { now: T0, source: '10.0.0.66' })
      flood.push(decision.outcome === 'not-queued' ? decision.reason : decision.outcome)
    }
    expect(flood.filter((o) => o === 'pending')).toHaveLength(MAX_PENDING_JOIN_REQUESTS_PER_SOURCE)
    expect(flood.filter((o) => o === 'source-full')).toHaveLength(300 - MAX_PENDING_JOIN_REQUESTS_PER_SOURCE)

    expect((await admin.listPendingJoinRequests()).slice(0, 3)).toEqual(
      real.map(({ request, source }) =>
        expect.objectContaining({ nodeId: request.nodeId, status: 'pending', source }),
      ),
    )
    // The flood took no room from other devices: a new one from another address still waits.
    const late = ask(pool, 'late')
    expect((await admin.handleJoinRequest(late.bytes, { now: T0, source: '10.0.0.4' })).outcome).toBe(
      'pending',
    )
    expect(await admin.joinQueueStats({ now: T0 })).toEqual({
      waiting: 3 + MAX_PENDING_JOIN_REQUESTS_PER_SOURCE + 1,
      capacity: MAX_PENDING_JOIN_REQUESTS,
      perSource: MAX_PENDING_JOIN_REQUESTS_PER_SOURCE,
    })
  })

  it('turns new requests away when the queue is full and keeps the oldest, which may still ask again', async () => {
    const { pool, admin } = await setup()
    const first = ask(pool, 'first')
    expect((await admin.handleJoinRequest(first.bytes, { now: T0, source: '10.1.0.0' })).outcome).toBe(
      'pending',
    )
    for (let i = 1; i < MAX_PENDING_JOIN_REQUESTS; i++) {
      const { bytes } = ask(pool, `device-${i}`, T0 + i)
      const decision = await admin.handleJoinRequest(bytes, { now: T0 + i, source: `10.1.0.${i}` })
      expect(decision.outcome).toBe('pending')
    }
    const extra = ask(pool, 'one too many', T0 + 1000)
    const turnedAway = await admin.handleJoinRequest(extra.bytes, { now: T0 + 1000, source: '10.2.0.1' })
    expect(turnedAway.outcome === 'not-queued' && turnedAway.reason).toBe('queue-full')
    const waiting = await admin.listPendingJoinRequests()
    expect(waiting).toHaveLength(MAX_PENDING_JOIN_REQUESTS)
    expect(waiting.map((r) => r.nodeId)).toContain(first.request.nodeId)
    expect(waiting.map((r) => r.nodeId)).not.toContain(extra.request.nodeId)

    // A device already waiting keeps its place when it asks again (pool-join asks every second).
    const again = ask(pool, 'first', T0 + 2000, first.device)
    expect((await admin.handleJoinRequest(again.bytes, { now: T0 + 2000, source: '10.1.0.0' })).outcome).toBe(
      'pending',
    )
  })
})
