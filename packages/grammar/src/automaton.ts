/**
 * The byte automaton: a pushdown automaton whose configurations are persistent stacks of immutable
 * frames. A frame reads bytes, may finish (pop), and may push a child (a JSON value inside an
 * object, say) while it continues as another frame once the child is done. Branching (anyOf, a
 * number that may end or go on) keeps several stacks at once; stacks that pop to the same parent
 * merge again, so the set stays small.
 */

/** Pushing one of `children`; the pushing frame goes on as `after` (undefined: it is done). */
export interface Call {
  readonly children: readonly Frame[]
  readonly after: Frame | undefined
}

export interface Frame {
  /** Fewest bytes that finish this frame from here (Infinity: it cannot finish). */
  readonly min: number
  /** It may finish here. */
  readonly ends: boolean
  /** It may push a child here. */
  readonly call: Call | undefined
  /** It may read a byte here. */
  readonly reads: boolean
  /** It is the text of a literal part (where a control token may match). */
  readonly literal: boolean
  /** The frame after `byte`, or undefined when `byte` cannot come next. */
  feed(byte: number): Frame | undefined
}

/** A frame that has finished. */
export const END: Frame = {
  min: 0,
  ends: true,
  call: undefined,
  reads: false,
  literal: false,
  feed: () => undefined,
}

/** One stack: `frame` on top of `parent`. `below`: fewest bytes that finish the frames under it. */
export class Thread {
  readonly frame: Frame
  readonly parent: Thread | undefined
  readonly below: number

  constructor(frame: Frame, parent: Thread | undefined) {
    this.frame = frame
    this.parent = parent
    this.below = parent === undefined ? 0 : parent.frame.min + parent.below
  }
}

/**
 * Where the automaton is: the stacks whose top frame reads the next byte, and whether the whole
 * grammar may end here. Immutable; `step` makes the next one.
 */
export class State {
  readonly threads: readonly Thread[]
  /** The grammar is complete here (an end-of-generation token may come). */
  readonly done: boolean
  #min = -1

  constructor(threads: readonly Thread[], done: boolean) {
    this.threads = threads
    this.done = done
  }

  /** Fewest bytes that complete the grammar from here (0 when done, Infinity when stuck). */
  get min(): number {
    if (this.#min < 0) {
      let min = this.done ? 0 : Number.POSITIVE_INFINITY
      for (const t of this.threads) min = Math.min(min, t.frame.min + t.below)
      this.#min = min
    }
    return this.#min
  }
}

/** The state at the start of a grammar whose root frame is `root`. */
export function initialState(root: Frame): State {
  return closure([new Thread(root, undefined)])
}

/**
 * The state after `byte`, or undefined when it cannot come next. `control`: the byte belongs to a
 * control token, which only the text of a literal part may take.
 */
export function step(state: State, byte: number, control = false): State | undefined {
  const threads = state.threads
  if (threads.length === 1) {
    const t = threads[0]!
    const f = t.frame
    if (control && !f.literal) return undefined
    const next = f.feed(byte)
    if (next === undefined) return undefined
    // The closure of `t` is within this state already; only `done` may have come from elsewhere.
    if (next === f && !state.done) return state
    if (!next.ends && next.call === undefined)
      return new State([next === f ? t : new Thread(next, t.parent)], false)
    return closure([next === f ? t : new Thread(next, t.parent)])
  }
  const moved: Thread[] = []
  for (const t of threads) {
    const f = t.frame
    if (control && !f.literal) continue
    const next = f.feed(byte)
    if (next !== undefined) moved.push(next === f ? t : new Thread(next, t.parent))
  }
  return moved.length === 0 ? undefined : closure(moved)
}

/** The state after all of `bytes`, or undefined when they cannot come next. */
export function stepAll(state: State, bytes: Uint8Array, control = false): State | undefined {
  let s: State | undefined = state
  for (let i = 0; i < bytes.length && s !== undefined; i++) s = step(s, bytes[i]!, control)
  return s
}

/**
 * Most stacks a state keeps. Alternatives that share a prefix (anyOf over similar objects, nested)
 * multiply until they pop back to a common parent; past this bound the extra ones are dropped,
 * which only narrows what may be generated.
 */
const MAX_THREADS = 256

/** Follows pops and pushes from `start` until every stack's top frame reads or is done. */
function closure(start: Thread[]): State {
  const seen = new Set<Thread>()
  const out: Thread[] = []
  let done = false
  const todo = start
  while (todo.length > 0) {
    const t = todo.pop()!
    if (seen.has(t)) continue
    seen.add(t)
    const f = t.frame
    if (f.reads && out.length < MAX_THREADS) out.push(t)
    if (f.ends) {
      if (t.parent === undefined) done = true
      else todo.push(t.parent)
    }
    const call = f.call
    if (call !== undefined) {
      const base = call.after === undefined ? t.parent : new Thread(call.after, t.parent)
      for (const child of call.children) todo.push(new Thread(child, base))
    }
  }
  return new State(out, done)
}

/** A trie over exact texts (a literal, the values of an enum); each node is a frame. */
export class TextFrame implements Frame {
  readonly children = new Map<number, TextFrame>()
  readonly literal: boolean
  readonly call = undefined
  ends = false
  reads = false
  min = Number.POSITIVE_INFINITY

  constructor(literal: boolean) {
    this.literal = literal
  }

  feed(byte: number): Frame | undefined {
    return this.children.get(byte)
  }
}

const encoder = new TextEncoder()

/** The trie of `texts` (at least one). */
export function textFrame(texts: readonly string[], literal: boolean): TextFrame {
  const root = new TextFrame(literal)
  for (const text of texts) {
    let node = root
    for (const byte of encoder.encode(text)) {
      let child = node.children.get(byte)
      if (child === undefined) {
        child = new TextFrame(literal)
        node.children.set(byte, child)
        node.reads = true
      }
      node = child
    }
    node.ends = true
  }
  const fill = (node: TextFrame): number => {
    let min = node.ends ? 0 : Number.POSITIVE_INFINITY
    for (const child of node.children.values()) min = Math.min(min, fill(child) + 1)
    node.min = min
    return min
  }
  fill(root)
  return root
}

/** The parts one after the other: pushes part `index`, then goes on as the sequence from `index + 1`. */
export function sequenceFrame(parts: readonly Frame[], index = 0): Frame {
  if (index === parts.length) return END
  const after = sequenceFrame(parts, index + 1)
  return {
    min: parts[index]!.min + after.min,
    ends: false,
    call: { children: [parts[index]!], after },
    reads: false,
    literal: false,
    feed: () => undefined,
  }
}
