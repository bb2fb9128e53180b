import { mkdir, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import {
  type AgentProcess,
  agentRequest,
  buildDashboard,
  createModel,
  eventually,
  type LaunchedBrowser,
  launchBrowser,
  REPO_ROOT,
  runMesh,
} from '@meshnet/test-harness'
import type { Page } from 'puppeteer-core'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type RingStatus, ringOfThree, ringStatus, streamAndKill } from './mesh-fixture.ts'

// The dashboard and chat page in a real Chromium (Debian's, through puppeteer-core), against a
// real ring of three `mesh start` processes on loopback: the page shows the ring's members with
// their shard ranges, a chat started on the page streams into it and lands in the job list, and a
// member killed mid-job shows up as a failover on the page. The screenshots in docs/images are
// taken here (MESHNET_UPDATE_SCREENSHOTS=1 writes them there; otherwise to a temp folder).

let root: string
let poolId: string
let dir: (name: string) => string
let launched: LaunchedBrowser | undefined
let skip: string | undefined
let links: { url: string; chat: string }
let shots: string
const agents = new Map<string, AgentProcess>()

const short = (nodeId: string) => `${nodeId.slice(0, 8)}…${nodeId.slice(-4)}`

beforeAll(async () => {
  const browser = await launchBrowser()
  if ('skip' in browser) {
    skip = browser.skip
    return
  }
  launched = browser
  await buildDashboard()
  root = await mkdtemp(join(tmpdir(), 'meshnet-dashboard-'))
  shots =
    process.env.MESHNET_UPDATE_SCREENSHOTS === '1' ? join(REPO_ROOT, 'docs', 'images') : join(root, 'shots')
  await mkdir(shots, { recursive: true })
  const model = join(root, 'model.gguf')
  // Slow enough at one thread per member that a member can be killed mid-job.
  await createModel(model, {
    layers: 12,
    embd: 768,
    heads: 12,
    kvHeads: 4,
    ff: 2048,
    vocab: 2000,
    type: 'Q8_0',
    seed: 11,
  })
  const ring = await ringOfThree(root, model)
  poolId = ring.poolId
  dir = ring.dir
  for (const [name, agent] of ring.agents) agents.set(name, agent)
  await eventually(
    'the ring’s shards to load',
    async () => ((await ringStatus(dir('A'), poolId)).ready ? true : undefined),
    60_000,
  )
  const printed = await runMesh(['dashboard', '--json', '--data-dir', dir('A')])
  expect(printed.code, printed.stderr).toBe(0)
  links = JSON.parse(printed.stdout) as { url: string; chat: string }
}, 180_000)

afterAll(async () => {
  await launched?.close()
  await Promise.all([...agents.values()].map((a) => a.stop()))
  if (root !== undefined) await rm(root, { recursive: true, force: true })
})

async function open(url: string, viewport = { width: 1280, height: 800 }): Promise<Page> {
  const page = await launched!.browser.newPage()
  await page.setViewport(viewport)
  await page.goto(url)
  return page
}

/** The text of every `[data-testid=<id>]` on the page. */
const texts = (page: Page, id: string) =>
  page.$$eval(`[data-testid="${id}"]`, (nodes) => nodes.map((n) => n.textContent ?? ''))

describe('the dashboard in Chromium, on a ring of three agents', () => {
  it('shows all three members with their shard ranges', async (context) => {
    if (skip) return context.skip(skip)
    const ring: RingStatus = await ringStatus(dir('A'), poolId)
    const page = await open(links.url)
    await page.waitForFunction(`document.querySelectorAll('[data-testid="member-row"]').length === 3`, {
      timeout: 20_000,
    })
    for (const member of ring.members) {
      const row = await page.$(`[data-testid="member-row"][data-node-id="${member.nodeId}"]`)
      expect(row, `the row of ${member.nodeId}`).not.toBeNull()
      const [first, end] = member.shard!.layers
      const layers = await row!.$eval('[data-testid="member-layers"]', (n) => n.textContent)
      expect(layers).toContain(`layers ${first}–${end - 1}`)
    }
    // Each link to another member gets its round trip, measured by ping while the page watches.
    await page.waitForFunction(
      `[...document.querySelectorAll('[data-testid="member-row"]')].every((row) => row.textContent.includes('self') || / ms$/.test(row.lastElementChild.textContent))`,
      { timeout: 20_000 },
    )
    // The token travelled in the link's fragment, not to the server, and was taken off the URL.
    expect(page.url()).not.toContain('token=')
    await page.screenshot({ path: join(shots, 'dashboard.png'), fullPage: true })
    // A mobile viewport reloads the page: wait for it to be drawn again before measuring.
    await page.setViewport({ width: 390, height: 844, isMobile: true, hasTouch: true })
    await page.waitForSelector('[data-testid="member-row"]')
    expect(await page.evaluate('document.documentElement.scrollWidth <= window.innerWidth')).toBe(true)
    await page.screenshot({ path: join(shots, 'dashboard-phone.png'), fullPage: true })
    await page.close()
  })

  it('streams a chat started on the chat page into the page and lists its job', async (context) => {
    if (skip) return context.skip(skip)
    const dashboard = await open(links.url)
    await dashboard.waitForSelector('[data-testid="member-row"]')
    const chat = await open(links.chat)
    await chat.waitForFunction(`document.querySelector('[data-testid="model-select"]')?.value`, {
      timeout: 20_000,
    })
    await chat.click('[data-testid="chat-max-tokens"]', { count: 3 })
    await chat.type('[data-testid="chat-max-tokens"]', '48')
    await chat.type('[data-testid="chat-input"]', 'Tell me about the mesh')
    await chat.click('[data-testid="chat-send"]')
    // Record the answer's length as it grows: several lengths means it streamed in.
    const lengths = new Set<number>()
    const meta = await eventually(
      'the answer to finish',
      async () => {
        const answer = (await texts(chat, 'chat-answer')).at(-1) ?? ''
        if (answer.length > 0) lengths.add(answer.length)
        const shown = (await texts(chat, 'chat-meta')).at(-1)
        return shown !== undefined && shown !== '' ? shown : undefined
      },
      60_000,
      25,
    )
    expect(lengths.size, 'the answer grew token by token').toBeGreaterThan(1)
    const jobs = await agentRequest<{ jobs: Array<{ id: string; status: string; tokens: number }> }>(
      dir('A'),
      '/jobs',
    )
    const job = jobs.jobs[0]!
    expect(job.status).toBe('completed')
    expect(meta).toMatch(/tok\/s/)
    // The job is in the dashboard's list, with its tokens.
    const row = await dashboard.waitForSelector(`[data-testid="job-row"][data-job-id="${job.id}"]`, {
      timeout: 10_000,
    })
    expect(await row!.evaluate((n) => n.textContent)).toContain(String(job.tokens))
    await chat.screenshot({ path: join(shots, 'chat.png') })
    await chat.close()
    await dashboard.close()
  })

  it('shows a failover on the page when a member is killed mid-job', async (context) => {
    if (skip) return context.skip(skip)
    const page = await open(links.url)
    await page.waitForSelector('[data-testid="member-row"]')
    const cId = (await agentRequest<{ nodeId: string }>(dir('C'), '/status')).nodeId
    const killed = await streamAndKill(
      dir('A'),
      ['--prompt', 'The ring passes the hidden state along', '--max-tokens', '96', '--mode', 'pipeline'],
      agents.get('C')!,
    )
    expect(killed.code, killed.err).toBe(0)
    expect(killed.killed).toBe(true)
    const failover = await page.waitForSelector('[data-testid="job-failover"]', { timeout: 15_000 })
    expect(await failover!.evaluate((n) => n.textContent)).toContain(short(cId).slice(0, 8))
    expect(await page.$('[data-testid="failover-banner"]')).not.toBeNull()
    await page.screenshot({ path: join(shots, 'dashboard-failover.png'), fullPage: true })
    await page.close()
  })
})
