// The functions given to page.evaluate and waitForFunction run in the page: they use the DOM.
/// <reference lib="dom" />
import { type BrowserName, buildDashboard, type LaunchedBrowser, launchBrowser } from '@meshnet/test-harness'
import type { Page, Viewport } from 'puppeteer-core'
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest'
import {
  ANSWER_META,
  type FakeAgent,
  MODEL,
  node,
  RUNNING_JOB,
  SYMMETRIC_ADVICE,
  startFakeAgent,
  TOKEN,
} from './fake-agent.ts'

// The built page alone in a real Chromium and Firefox (Debian's, through puppeteer-core), against a fake agent
// that serves it through dashboardApp: what it shows of a fixed state, how it applies live job
// events, how the chat streams, and that it fits a desktop and a phone. Skips without Chromium.

/** Debian's Chromium and Firefox ESR; a browser that is not installed skips its half. */
const BROWSERS: BrowserName[] = ['chromium', 'firefox']

const DESKTOP = { width: 1280, height: 800 }
const PHONE = { width: 390, height: 844, isMobile: true, hasTouch: true, deviceScaleFactor: 2 }

let launched: LaunchedBrowser | undefined
let skip: string | undefined
let agent: FakeAgent
const pages: Page[] = []
const pageErrors: string[] = []

describe.each(BROWSERS)('in %s', (name) => {
  beforeAll(async () => {
    const browser = await launchBrowser({ browser: name })
    if ('skip' in browser) {
      skip = browser.skip
      return
    }
    launched = browser
    agent = await startFakeAgent(await buildDashboard())
  }, 180_000)

  beforeEach((context) => {
    if (skip !== undefined) context.skip(skip)
  })

  // Each open dashboard holds an events stream, and Chromium opens at most 6 connections to a host:
  // every test closes its tabs. No test may leave an uncaught error in the page.
  afterEach(async () => {
    await Promise.all(pages.splice(0).map((page) => page.close()))
    expect(pageErrors.splice(0)).toEqual([])
  })

  afterAll(async () => {
    await launched?.close()
    await agent?.close()
  })

  /**
   * A new tab (its own sessionStorage) at `path`, signed in through the link's `#token=` fragment
   * unless `token` is null.
   */
  async function open(
    path: string,
    options: { token?: string | null; viewport?: Viewport } = {},
  ): Promise<Page> {
    const token = options.token === undefined ? TOKEN : options.token
    const page = await launched!.browser.newPage()
    pages.push(page)
    page.on('pageerror', (err) => pageErrors.push(String(err)))
    await page.setViewport(options.viewport ?? DESKTOP)
    await page.goto(`${agent.url}${path}${token === null ? '' : `#token=${token}`}`)
    return page
  }

  const texts = (page: Page, id: string) =>
    page.$$eval(`[data-testid="${id}"]`, (nodes) => nodes.map((n) => n.textContent ?? ''))

  const status = (page: Page) => page.$eval('[data-testid="connection-status"]', (n) => n.textContent)

  async function membersShown(page: Page): Promise<void> {
    await page.waitForFunction(() => document.querySelectorAll('[data-testid="member-row"]').length === 3)
  }

  /** Waits until the page has its events stream open and the state drawn. */
  async function live(page: Page): Promise<void> {
    await membersShown(page)
    await page.waitForFunction(
      () => document.querySelector('[data-testid="connection-status"]')?.textContent === 'live',
    )
  }

  async function fits(page: Page): Promise<{ scrollWidth: number; innerWidth: number }> {
    return page.evaluate(() => ({ scrollWidth: document.documentElement.scrollWidth, innerWidth }))
  }

  describe('the dashboard page', () => {
    it('asks for a token when it has none, and tells how to get a link', async () => {
      const page = await open('/', { token: null })
      await page.waitForSelector('[data-testid="token-form"]')
      expect(await texts(page, 'token-form')).toEqual([expect.stringContaining('mesh dashboard')])
      await page.type('[data-testid="token-input"]', 'not-the-token')
      await page.keyboard.press('Enter')
      await page.waitForFunction(() => document.body.textContent?.includes('refused that token'))
      await page.type('[data-testid="token-input"]', TOKEN)
      await page.keyboard.press('Enter')
      await membersShown(page)
    })

    it('shows the three members with their shard ranges, and takes the token off the URL', async () => {
      const page = await open('/')
      await live(page)
      const rows = await page.$$eval('[data-testid="member-row"]', (nodes) =>
        nodes.map((n) => [
          (n as HTMLElement).dataset.nodeId,
          n.querySelector('[data-testid="member-layers"]')?.textContent,
        ]),
      )
      expect(rows).toEqual([
        [node(1), 'layers 0–7'],
        [node(2), 'layers 8–15'],
        [node(3), 'layers 16–23'],
      ])
      expect(page.url()).toBe(`${agent.url}/`)
      const ring = await page.$eval('[data-testid="ring-svg"]', (svg) => ({
        dots: svg.querySelectorAll('.ring-dot').length,
        text: svg.textContent,
      }))
      expect(ring.dots).toBe(3)
      expect(ring.text).toContain('layers 16–23')
      const rowText = (await texts(page, 'member-row')).join('\n')
      expect(rowText).toContain('50%') // member 2 loading: 1.5 of 3 GiB
      expect(rowText).toContain('8.0 GiB')
      expect(rowText).toContain('relayed')
      const pools = (await texts(page, 'pools')).join('')
      expect(pools).toContain('in 29 days')
      expect(pools).toContain('delta')
    })

    it("shows the node's NAT type and mesh doctor's advice", async () => {
      const page = await open('/')
      await live(page)
      expect(await texts(page, 'nat-type')).toEqual(['symmetric NAT'])
      expect(await texts(page, 'advice')).toEqual([SYMMETRIC_ADVICE.replaceAll('`', '')])
    })

    it('appends the text of a token event to the running job', async () => {
      const page = await open('/')
      await live(page)
      const text = `[data-testid="job-row"][data-job-id="${RUNNING_JOB}"] [data-testid="job-text"]`
      expect(await page.$eval(text, (n) => n.textContent)).toBe('Once upon')
      agent.emit({ type: 'token', jobId: RUNNING_JOB, index: 2, text: ' a time', tokensPerSecond: 14.2 })
      await page.waitForFunction(
        (selector) => document.querySelector(selector)?.textContent === 'Once upon a time',
        {},
        text,
      )
      const row = await page.$eval(
        `[data-testid="job-row"][data-job-id="${RUNNING_JOB}"]`,
        (n) => n.textContent,
      )
      expect(row).toContain('14.2 tok/s')
    })

    it('shows a failover on the job and in a banner', async () => {
      const page = await open('/')
      await live(page)
      agent.emit({
        type: 'members',
        jobId: RUNNING_JOB,
        members: [node(1), node(2)],
        failover: { dead: [node(3)], atToken: 5, at: new Date().toISOString() },
      })
      const badge = await page.waitForSelector(
        `[data-testid="job-row"][data-job-id="${RUNNING_JOB}"] [data-testid="job-failover"]`,
      )
      expect(await badge!.evaluate((n) => n.textContent)).toBe('failover: 12D3KooW…3003 lost at token 5')
      expect((await texts(page, 'failover-banner')).join('')).toContain('lost at token 5')
    })

    it('says it is disconnected when the stream ends, and reconnects', async () => {
      const page = await open('/')
      await live(page)
      agent.dropStreams()
      await page.waitForFunction(
        () =>
          document.querySelector('[data-testid="connection-status"]')?.textContent ===
          'disconnected, retrying',
        { polling: 'mutation' },
      )
      await live(page)
      expect(await status(page)).toBe('live')
    })

    it('fits a desktop window and a phone, the ring and the tables stacked on the phone', async () => {
      const page = await open('/')
      await live(page)
      const desktop = await fits(page)
      expect(desktop.scrollWidth).toBeLessThanOrEqual(desktop.innerWidth)
      // Turning on touch and the mobile viewport reloads the page (the token stays in the tab).
      await page.setViewport(PHONE)
      await live(page)
      const phone = await fits(page)
      expect(phone.scrollWidth).toBeLessThanOrEqual(phone.innerWidth)
      const layout = await page.evaluate(() => {
        const svg = document.querySelector('[data-testid="ring-svg"]')!.getBoundingClientRect()
        const box = document.querySelector('.table-box')!
        return {
          svgBottom: svg.bottom,
          tableTop: box.getBoundingClientRect().top,
          scrolls: box.scrollWidth > box.clientWidth,
        }
      })
      expect(layout.tableTop).toBeGreaterThanOrEqual(layout.svgBottom)
      expect(layout.scrolls, 'the members table scrolls inside its own box').toBe(true)
    })
  })

  describe('the chat page', () => {
    async function ready(page: Page): Promise<void> {
      await page.waitForFunction(
        (model) =>
          (document.querySelector('[data-testid="model-select"]') as HTMLSelectElement | null)?.value ===
          model,
        {},
        MODEL,
      )
    }

    it('streams an answer, then shows who ran it and how fast', async () => {
      const page = await open('/chat')
      await ready(page)
      const before = agent.chats.length
      await page.type('[data-testid="chat-input"]', 'Hi ring')
      await page.click('[data-testid="chat-send"]')
      // The first piece shows while the rest is still to come: the answer streams in.
      await page.waitForFunction(
        () => document.querySelector('[data-testid="chat-answer"]')?.textContent === 'Hello',
      )
      expect(await texts(page, 'chat-meta')).toEqual([])
      agent.releaseAnswer()
      await page.waitForSelector('[data-testid="chat-meta"]')
      expect(await texts(page, 'chat-answer')).toEqual(['Hello from the ring.'])
      const short = ANSWER_META.members.map((id) => `${id.slice(0, 8)}…${id.slice(-4)}`).join(', ')
      expect(await texts(page, 'chat-meta')).toEqual([`by pipeline on ${short} · 12.5 tok/s · TTFT 80 ms`])
      expect(agent.chats.slice(before)).toEqual([
        {
          model: MODEL,
          messages: [{ role: 'user', content: 'Hi ring' }],
          stream: true,
          max_tokens: 128,
          temperature: 0.7,
        },
      ])
    })

    it('shows an error that ends the stream inline', async () => {
      const page = await open('/chat')
      await ready(page)
      await page.type('[data-testid="chat-input"]', 'please fail')
      await page.click('[data-testid="chat-send"]')
      await page.waitForSelector('[data-testid="chat-error"]')
      expect(await texts(page, 'chat-error')).toEqual(['member 12D3KooW…0003 went away'])
      expect(await texts(page, 'chat-answer')).toEqual(['Hello'])
    })

    it('stops an answer with the stop button', async () => {
      const page = await open('/chat')
      await ready(page)
      const abandoned = agent.abandoned
      await page.type('[data-testid="chat-input"]', 'talk forever')
      await page.click('[data-testid="chat-send"]')
      await page.waitForFunction(
        () => document.querySelector('[data-testid="chat-answer"]')?.textContent === 'Hello',
      )
      await page.click('[data-testid="chat-stop"]')
      await page.waitForSelector('[data-testid="chat-send"]')
      await page.waitForFunction(() => document.body.textContent?.includes('stopped'))
      await expect.poll(() => agent.abandoned).toBe(abandoned + 1)
    })

    it('is one link away from the dashboard, still signed in', async () => {
      const page = await open('/')
      await live(page)
      await page.click('nav a[href="/chat"]')
      await ready(page)
      expect(page.url()).toBe(`${agent.url}/chat`)
      await page.goBack()
      await membersShown(page)
    })

    it('fits a desktop window and a phone', async () => {
      for (const viewport of [DESKTOP, PHONE]) {
        const page = await open('/chat', { viewport })
        await ready(page)
        const { scrollWidth, innerWidth } = await fits(page)
        expect(scrollWidth, `${viewport.width}×${viewport.height}`).toBeLessThanOrEqual(innerWidth)
      }
    })
  })
})
