import { type Frame, textFrame } from './automaton.ts'
import { ArrayShape, isSpace, MAX_WHITESPACE, ObjectShape } from './container-frames.ts'
import { NumberSpec, StringSpec } from './scalar-frames.ts'
import { ANY, type SchemaNode } from './schema-compile.ts'

/** Levels of arrays and objects one JSON value may nest (recursive schemas and free values alike). */
export const MAX_NESTING = 32

const INF = Number.POSITIVE_INFINITY

const FREE_OBJECT: SchemaNode = { kind: 'object', props: [], free: true }
const FREE_ARRAY: SchemaNode = { kind: 'array', prefix: [], items: ANY, minItems: 0, maxItems: INF }

/**
 * The frames and shortest lengths of the schema nodes of one grammar, per nesting depth left
 * (`d`: how many more arrays/objects may open). Everything is computed once and shared.
 */
export class JsonContext {
  readonly #min = new Map<SchemaNode, number[]>()
  readonly #frames = new Map<SchemaNode, Array<readonly Frame[]>>()
  readonly #scalars = new Map<SchemaNode, Frame>()

  /** Bytes of the shortest value of `node` with `d` levels of nesting left (Infinity: none). */
  minLength(node: SchemaNode, d: number): number {
    let row = this.#min.get(node)
    if (row === undefined) {
      row = []
      this.#min.set(node, row)
    }
    const known = row[d]
    if (known !== undefined) return known
    let min: number
    switch (node.kind) {
      case 'union':
        min = Math.min(...node.options.map((o) => this.minLength(o, d)))
        break
      case 'ref':
        min = node.target === undefined ? INF : this.minLength(node.target, d)
        break
      case 'object':
      case 'array':
        min = d < 1 ? INF : this.#container(node, d).min
        break
      case 'any':
        min = 1
        break
      default:
        min = this.#scalar(node)?.min ?? INF
    }
    row[d] = min
    return min
  }

  /** The first frames of a value of `node` (one per alternative that has a value at depth `d`). */
  frames(node: SchemaNode, d: number): readonly Frame[] {
    let row = this.#frames.get(node)
    if (row === undefined) {
      row = []
      this.#frames.set(node, row)
    }
    let frames = row[d]
    if (frames === undefined) {
      frames = this.minLength(node, d) === INF ? [] : [...new Set(this.#alternatives(node, d))]
      row[d] = frames
    }
    return frames
  }

  #alternatives(node: SchemaNode, d: number): readonly Frame[] {
    switch (node.kind) {
      case 'union':
        return node.options.flatMap((o) => this.frames(o, d))
      case 'ref':
        return node.target === undefined ? [] : this.frames(node.target, d)
      case 'any':
        return [FREE_OBJECT, FREE_ARRAY, STRING_NODE, NUMBER_NODE, LITERALS_NODE].flatMap((n) =>
          this.frames(n, d),
        )
      case 'object':
      case 'array':
        return [this.#container(node, d)]
      default: {
        const frame = this.#scalar(node)
        return frame === undefined ? [] : [frame]
      }
    }
  }

  #scalar(node: SchemaNode): Frame | undefined {
    let frame = this.#scalars.get(node)
    if (frame === undefined) {
      if (node.kind === 'string') frame = new StringSpec(node.minLength, node.maxLength).open
      else if (node.kind === 'number') frame = new NumberSpec(node.integer, node.bounds).start
      else if (node.kind === 'values') frame = textFrame(node.texts, false)
      else return undefined
      this.#scalars.set(node, frame)
    }
    return frame
  }

  readonly #containers = new Map<SchemaNode, Frame[]>()

  /** The opening frame of an object or array at depth `d` (d >= 1). */
  #container(node: SchemaNode & { kind: 'object' | 'array' }, d: number): Frame {
    let row = this.#containers.get(node)
    if (row === undefined) {
      row = []
      this.#containers.set(node, row)
    }
    let frame = row[d]
    if (frame === undefined) {
      frame =
        node.kind === 'object' ? new ObjectShape(this, node, d).open : new ArrayShape(this, node, d).open
      row[d] = frame
    }
    return frame
  }
}

const STRING_NODE: SchemaNode = { kind: 'string', minLength: 0, maxLength: INF }
const NUMBER_NODE: SchemaNode = { kind: 'number', integer: false, bounds: undefined }
const LITERALS_NODE: SchemaNode = { kind: 'values', texts: ['true', 'false', 'null'] }

/** A JSON part: whitespace, then a value of `root`. */
export function jsonPartFrame(ctx: JsonContext, root: SchemaNode): Frame {
  const children = ctx.frames(root, MAX_NESTING)
  const min = ctx.minLength(root, MAX_NESTING)
  const lead = (ws: number): Frame => ({
    min,
    ends: false,
    call: { children, after: undefined },
    reads: ws < MAX_WHITESPACE,
    literal: false,
    feed: (byte) => (isSpace(byte) && ws < MAX_WHITESPACE ? lead(ws + 1) : undefined),
  })
  return lead(0)
}

/** A JSON part without a schema: any object (OpenAI's `json_object`). */
export const ANY_OBJECT: SchemaNode = FREE_OBJECT
