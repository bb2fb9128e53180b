import { type Call, END, type Frame } from './automaton.ts'
import type { JsonContext } from './json-context.ts'
import { StringSpec } from './scalar-frames.ts'
import { ANY, type SchemaNode } from './schema-compile.ts'

/** Longest run of whitespace between two JSON tokens. */
export const MAX_WHITESPACE = 20

const INF = Number.POSITIVE_INFINITY
const encoder = new TextEncoder()
export const isSpace = (b: number) => b === 0x20 || b === 0x0a || b === 0x09
const KEY = new StringSpec(0, INF)

/** A frame of an object or an array: whitespace between tokens is counted in `ws`. */
abstract class ContainerFrame implements Frame {
  readonly phase: number
  readonly index: number
  readonly ws: number
  abstract readonly min: number
  readonly ends = false
  readonly reads = true
  readonly literal = false
  call: Call | undefined = undefined

  constructor(phase: number, index: number, ws: number) {
    this.phase = phase
    this.index = index
    this.ws = ws
  }

  feed(byte: number): Frame | undefined {
    if (isSpace(byte) && this.phase !== KEY_BYTES) {
      return this.ws < MAX_WHITESPACE && this.phase !== OPEN ? this.withSpace() : undefined
    }
    return this.read(byte)
  }

  protected abstract withSpace(): Frame
  protected abstract read(byte: number): Frame | undefined
}

const OPEN = 0
const FIRST = 1
const NEXT = 2
const KEY_BYTES = 3
const COLON = 4
const VALUE = 5
const AFTER = 6

/**
 * An object schema at one depth: its properties in order (required ones must come, optional ones
 * may be skipped), or any keys when it is free. Costs are the bytes of the shortest completions.
 */
export class ObjectShape {
  readonly ctx: JsonContext
  readonly node: SchemaNode & { kind: 'object' }
  readonly d: number
  readonly keys: Uint8Array[]
  /** Bytes of `"key":value` for property j at its shortest. */
  readonly entry: number[]
  /** From property i on: bytes of the required entries, their number, and the cheapest entry. */
  readonly requiredCost: number[]
  readonly requiredCount: number[]
  readonly cheapest: number[]
  readonly candidates: number[][]
  readonly open: ObjectFrame
  readonly #frames = new Map<number, ObjectFrame>()

  constructor(ctx: JsonContext, node: SchemaNode & { kind: 'object' }, d: number) {
    this.ctx = ctx
    this.node = node
    this.d = d
    const props = node.props
    this.keys = props.map((p) => encoder.encode(JSON.stringify(p.key)))
    this.entry = props.map((p, j) => this.keys[j]!.length + 1 + ctx.minLength(p.node, d - 1))
    const n = props.length
    this.requiredCost = Array.from({ length: n + 1 }, () => 0)
    this.requiredCount = Array.from({ length: n + 1 }, () => 0)
    this.cheapest = Array.from({ length: n + 1 }, () => INF)
    this.candidates = Array.from({ length: n + 1 }, () => [])
    for (let i = n - 1; i >= 0; i--) {
      const required = props[i]!.required
      this.requiredCost[i] = this.requiredCost[i + 1]! + (required ? this.entry[i]! : 0)
      this.requiredCount[i] = this.requiredCount[i + 1]! + (required ? 1 : 0)
      this.cheapest[i] = Math.min(this.cheapest[i + 1]!, this.entry[i]!)
      // The keys that may come next from i: optional ones up to the first required one.
      const next = required ? [] : this.candidates[i + 1]!
      this.candidates[i] = this.entry[i]! < INF ? [i, ...next] : next
    }
    this.open = new ObjectFrame(this, OPEN, 0, 0, undefined, 0)
  }

  /** Bytes after property k-1's value: the required entries left, a comma before each, and `}`. */
  after(k: number): number {
    return this.requiredCost[k]! + this.requiredCount[k]! + 1
  }

  /** The frame of `phase` at `index` with no whitespace read (shared). */
  frame(phase: number, index: number): ObjectFrame {
    const key = phase + index * 8
    let frame = this.#frames.get(key)
    if (frame === undefined) {
      frame = new ObjectFrame(this, phase, index, 0, undefined, 0)
      this.#frames.set(key, frame)
    }
    return frame
  }

  /** Bytes that finish the object from `phase` at `index`. */
  minAt(phase: number, index: number, cands: readonly number[] | undefined, off: number): number {
    const free = this.node.free
    const valueMin = (j: number) => this.ctx.minLength(this.node.props[j]!.node, this.d - 1)
    switch (phase) {
      case OPEN:
        return 1 + this.minAt(FIRST, 0, undefined, 0)
      case FIRST:
        return this.requiredCount[0]! > 0 ? this.requiredCost[0]! + this.requiredCount[0]! : 1
      case NEXT:
        if (free) return 5 // "":0}
        return this.requiredCount[index]! > 0
          ? this.requiredCost[index]! + this.requiredCount[index]!
          : this.cheapest[index]! + 1
      case KEY_BYTES:
        return Math.min(
          ...cands!.map((c) => this.keys[c]!.length - off + 1 + valueMin(c) + this.after(c + 1)),
        )
      case COLON:
        return free ? 3 : 1 + valueMin(index) + this.after(index + 1)
      case VALUE:
        return free ? 2 : valueMin(index) + this.after(index + 1)
      default:
        return free ? 1 : this.after(index)
    }
  }
}

class ObjectFrame extends ContainerFrame {
  readonly shape: ObjectShape
  readonly cands: readonly number[] | undefined
  readonly off: number
  readonly min: number

  constructor(
    shape: ObjectShape,
    phase: number,
    index: number,
    ws: number,
    cands: readonly number[] | undefined,
    off: number,
  ) {
    super(phase, index, ws)
    this.shape = shape
    this.cands = cands
    this.off = off
    this.min = shape.minAt(phase, index, cands, off)
    const { ctx, d, node } = shape
    if (phase === VALUE) {
      this.call = {
        children: ctx.frames(node.free ? ANY : node.props[index]!.node, d - 1),
        after: shape.frame(AFTER, index + 1),
      }
    } else if (node.free && (phase === FIRST || phase === NEXT)) {
      this.call = { children: [KEY.open], after: shape.frame(COLON, 0) }
    }
  }

  protected withSpace(): Frame {
    return new ObjectFrame(this.shape, this.phase, this.index, this.ws + 1, this.cands, this.off)
  }

  protected read(byte: number): Frame | undefined {
    const shape = this.shape
    const i = this.index
    switch (this.phase) {
      case OPEN:
        return byte === 0x7b ? shape.frame(FIRST, 0) : undefined
      case FIRST:
      case NEXT:
        if (byte === 0x7d && this.phase === FIRST && shape.requiredCount[i]! === 0) return END
        if (byte !== 0x22 || shape.node.free || shape.candidates[i]!.length === 0) return undefined
        return new ObjectFrame(shape, KEY_BYTES, i, 0, shape.candidates[i], 1)
      case KEY_BYTES: {
        const off = this.off
        const cands = this.cands!.filter((c) => shape.keys[c]![off] === byte)
        if (cands.length === 0) return undefined
        const done = cands.find((c) => shape.keys[c]!.length === off + 1)
        if (done !== undefined) return shape.frame(COLON, done)
        return new ObjectFrame(shape, KEY_BYTES, i, 0, cands, off + 1)
      }
      case COLON:
        return byte === 0x3a ? shape.frame(VALUE, i) : undefined
      case VALUE:
        return undefined
      default:
        if (byte === 0x7d) return shape.node.free || shape.requiredCount[i] === 0 ? END : undefined
        if (byte !== 0x2c) return undefined
        return shape.node.free || shape.cheapest[i]! < INF ? shape.frame(NEXT, i) : undefined
    }
  }
}

/** An array schema at one depth: items by position (prefixItems, then items), minItems..maxItems. */
export class ArrayShape {
  readonly ctx: JsonContext
  readonly node: SchemaNode & { kind: 'array' }
  readonly d: number
  /** Bytes of `,item` from item k to item minItems-1, at their shortest. */
  readonly rest: number[]
  readonly open: ArrayFrame
  /** Counts past this behave alike (no maximum, past the prefix and the minimum). */
  readonly #clamp: number
  readonly #frames = new Map<number, ArrayFrame>()

  constructor(ctx: JsonContext, node: SchemaNode & { kind: 'array' }, d: number) {
    this.ctx = ctx
    this.node = node
    this.d = d
    this.#clamp = node.maxItems === INF ? Math.max(node.minItems, node.prefix.length) : INF
    this.rest = Array.from({ length: node.minItems + 1 }, () => 0)
    for (let k = node.minItems - 1; k >= 0; k--) this.rest[k] = this.rest[k + 1]! + 1 + this.cost(k)
    this.open = new ArrayFrame(this, OPEN, 0, 0)
  }

  item(k: number): SchemaNode | undefined {
    const node = this.node
    return k < node.prefix.length ? node.prefix[k] : k < node.maxItems ? node.items : undefined
  }

  cost(k: number): number {
    const item = this.item(k)
    return item === undefined ? INF : this.ctx.minLength(item, this.d - 1)
  }

  /** Bytes after k items: the items still needed, a comma before each, and `]`. */
  after(k: number): number {
    return (k < this.node.minItems ? this.rest[k]! : 0) + 1
  }

  frame(phase: number, k: number): ArrayFrame {
    const count = Math.min(k, this.#clamp)
    const key = phase + count * 8
    let frame = this.#frames.get(key)
    if (frame === undefined) {
      frame = new ArrayFrame(this, phase, count, 0)
      this.#frames.set(key, frame)
    }
    return frame
  }
}

class ArrayFrame extends ContainerFrame {
  readonly shape: ArrayShape
  readonly min: number

  constructor(shape: ArrayShape, phase: number, count: number, ws: number) {
    super(phase, count, ws)
    this.shape = shape
    const min = shape.node.minItems
    this.min =
      phase === OPEN
        ? 1 + (min === 0 ? 1 : shape.cost(0) + shape.after(1))
        : phase === FIRST
          ? min === 0
            ? 1
            : shape.cost(0) + shape.after(1)
          : phase === NEXT
            ? shape.cost(count) + shape.after(count + 1)
            : shape.after(count)
    if ((phase === FIRST || phase === NEXT) && shape.cost(count) < INF) {
      this.call = {
        children: shape.ctx.frames(shape.item(count)!, shape.d - 1),
        after: shape.frame(AFTER, count + 1),
      }
    }
  }

  protected withSpace(): Frame {
    return new ArrayFrame(this.shape, this.phase, this.index, this.ws + 1)
  }

  protected read(byte: number): Frame | undefined {
    const shape = this.shape
    const k = this.index
    if (this.phase === OPEN) return byte === 0x5b ? shape.frame(FIRST, 0) : undefined
    if (byte === 0x5d)
      return (this.phase === FIRST || this.phase === AFTER) && k >= shape.node.minItems ? END : undefined
    if (byte === 0x2c && this.phase === AFTER) return shape.cost(k) < INF ? shape.frame(NEXT, k) : undefined
    return undefined
  }
}
