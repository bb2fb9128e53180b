import type { ToolFamily } from './families.ts'
import { callsFrom, nextCallStart, type ParsedToolCall } from './parse.ts'

/** What a ToolCallStreamParser lets through: text for `delta.content` ('' for none), and whole calls. */
export interface ToolCallStreamDelta {
  content: string
  toolCalls: ParsedToolCall[]
}

/**
 * Splits a streamed reply into content and tool calls as it is generated. Text is passed on as soon
 * as it surely does not start a tool call; a possible start (`<tool_c`, `{"na`) is held back the way a
 * stop sequence is. Once a call starts, the rest of the reply is held, and `end()` gives the calls
 * (each whole) and any text around them. The content and calls of a whole stream are
 * those `parseToolCalls(family, text)` finds in its text; leading whitespace is held until content
 * follows, so a reply that is only calls has no content.
 */
export class ToolCallStreamParser {
  readonly #family: ToolFamily
  /** Content not passed on yet: whitespace held at the start, then perhaps a call's start. */
  #pending = ''
  /** Content other than whitespace has been passed on. */
  #wrote = false
  /** From a sure call start on, the rest of the reply; undefined before. */
  #call: string | undefined
  #ended = false

  constructor(family: ToolFamily) {
    this.#family = family
  }

  /** Whether a tool call has started (everything from there on is held until `end()`). */
  get inToolCall(): boolean {
    return this.#call !== undefined
  }

  /** Takes the next piece of generated text; returns what can be passed on now. */
  push(text: string): ToolCallStreamDelta {
    if (this.#ended) throw new Error('ToolCallStreamParser: push() after end()')
    if (this.#call !== undefined) {
      this.#call += text
      return { content: '', toolCalls: [] }
    }
    this.#pending += text
    const start = nextCallStart(this.#family, this.#pending, 0, !this.#wrote, false)
    const safe = start === undefined ? this.#pending.length : start.at
    const content = this.#write(this.#pending.slice(0, safe))
    if (start?.sure === true) {
      this.#call = this.#pending.slice(safe)
      this.#pending = this.#wrote ? '' : this.#pending.slice(0, safe)
    } else {
      this.#pending = this.#wrote ? this.#pending.slice(safe) : this.#pending
    }
    return { content, toolCalls: [] }
  }

  /** The reply is complete: what was held, as content or tool calls. */
  end(): ToolCallStreamDelta {
    if (this.#ended) return { content: '', toolCalls: [] }
    this.#ended = true
    const held = this.#pending
    this.#pending = ''
    if (this.#call === undefined) return { content: held, toolCalls: [] }
    const found = callsFrom(this.#family, this.#call, !this.#wrote)
    if (found === undefined) return { content: held + this.#call, toolCalls: [] }
    const content = held + found.content
    // A reply that is only calls (and whitespace) has no content, as parseToolCalls says.
    return { content: this.#wrote || content.trim() !== '' ? content : '', toolCalls: found.toolCalls }
  }

  /**
   * Passes on `text` (the safe part of #pending, which it starts) unless all of the reply so far is
   * whitespace: then it stays in #pending.
   */
  #write(text: string): string {
    if (!this.#wrote && text.trim() === '') return ''
    this.#wrote = true
    return text
  }
}
