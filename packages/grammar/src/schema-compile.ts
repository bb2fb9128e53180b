import { GrammarSchemaError } from './errors.ts'
import { integerRange, MAX_BOUNDED } from './scalar-frames.ts'

/** Largest `minLength` a schema may ask for (code points). */
export const MAX_MIN_LENGTH = 8192
/** Largest `minItems` a schema may ask for. */
export const MAX_MIN_ITEMS = 1024

/** Bounds of a number or integer schema, as given (undefined: none). */
export interface NumberBounds {
  minimum: number | undefined
  maximum: number | undefined
  exclusiveMinimum: number | undefined
  exclusiveMaximum: number | undefined
}

/** A JSON Schema reduced to what generation needs. Nodes form a graph: `$ref` may recurse. */
export type SchemaNode =
  | { kind: 'never' }
  | { kind: 'any' }
  | { kind: 'string'; minLength: number; maxLength: number }
  | { kind: 'number'; integer: boolean; bounds: NumberBounds | undefined }
  /** `enum`, `const`, `boolean`, `null`: one of these exact (compact) JSON texts. */
  | { kind: 'values'; texts: string[] }
  | { kind: 'object'; props: PropNode[]; free: boolean }
  | { kind: 'array'; prefix: SchemaNode[]; items: SchemaNode | undefined; minItems: number; maxItems: number }
  | { kind: 'union'; options: SchemaNode[] }
  | { kind: 'ref'; ref: string; target: SchemaNode | undefined }

export interface PropNode {
  key: string
  node: SchemaNode
  required: boolean
}

export const ANY: SchemaNode = { kind: 'any' }
const NEVER: SchemaNode = { kind: 'never' }

const ANNOTATIONS = new Set([
  'title',
  'description',
  'default',
  'examples',
  '$schema',
  '$id',
  '$comment',
  'strict',
  'deprecated',
  'readOnly',
  'writeOnly',
])
const BY_TYPE = {
  object: ['properties', 'required', 'additionalProperties'],
  array: ['items', 'prefixItems', 'minItems', 'maxItems'],
  string: ['minLength', 'maxLength'],
  number: ['minimum', 'maximum', 'exclusiveMinimum', 'exclusiveMaximum'],
} as const
/** Every keyword a schema may use besides the annotations. */
export const SUPPORTED_KEYWORDS: readonly string[] = [
  'type',
  ...BY_TYPE.object,
  ...BY_TYPE.array,
  'enum',
  'const',
  'anyOf',
  'oneOf',
  '$ref',
  '$defs',
  'definitions',
  ...BY_TYPE.string,
  ...BY_TYPE.number,
]
const SUPPORTED = new Set(SUPPORTED_KEYWORDS)
const TYPES = ['string', 'number', 'integer', 'boolean', 'null', 'object', 'array'] as const
type TypeName = (typeof TYPES)[number]

type Schema = { [key: string]: unknown }

const isObject = (v: unknown): v is Schema => typeof v === 'object' && v !== null && !Array.isArray(v)

/**
 * Checks a JSON Schema and reduces it to a SchemaNode; `label` names it in errors (`response
 * schema`). Throws GrammarSchemaError naming the JSON pointer and the keyword.
 */
export function compileSchema(schema: unknown, label: string): SchemaNode {
  const compiler = new SchemaCompiler(schema, label)
  const root = compiler.compile(schema, [])
  compiler.checkCycles(root)
  return root
}

class SchemaCompiler {
  readonly #root: unknown
  readonly #label: string
  readonly #refs = new Map<string, SchemaNode & { kind: 'ref' }>()

  constructor(root: unknown, label: string) {
    this.#root = root
    this.#label = label
  }

  fail(path: readonly string[], message: string): never {
    throw new GrammarSchemaError(`${this.#label} at ${pointer(path)}: ${message}`, {
      details: { pointer: pointer(path) },
    })
  }

  compile(schema: unknown, path: readonly string[]): SchemaNode {
    if (schema === true) return ANY
    if (schema === false) return NEVER
    if (!isObject(schema)) return this.fail(path, 'a schema must be an object or a boolean')
    for (const key of Object.keys(schema)) {
      if (ANNOTATIONS.has(key) || SUPPORTED.has(key)) continue
      this.fail(path, `"${key}" is not supported here; supported: ${SUPPORTED_KEYWORDS.join(', ')}`)
    }
    for (const defs of ['$defs', 'definitions']) {
      if (defs in schema && !isObject(schema[defs]))
        this.fail([...path, defs], 'must be an object of schemas')
    }
    const validation = Object.keys(schema).filter(
      (k) => !ANNOTATIONS.has(k) && k !== '$defs' && k !== 'definitions',
    )
    if ('$ref' in schema) {
      this.#alone(path, '$ref', validation, [])
      return this.#ref(schema.$ref, path)
    }
    if ('anyOf' in schema || 'oneOf' in schema) {
      const keyword = 'anyOf' in schema ? 'anyOf' : 'oneOf'
      this.#alone(path, keyword, validation, [])
      const options = schema[keyword]
      if (!Array.isArray(options) || options.length === 0)
        this.fail([...path, keyword], 'must be a non-empty array of schemas')
      return { kind: 'union', options: options.map((o, i) => this.compile(o, [...path, keyword, String(i)])) }
    }
    const types = this.#types(schema, path)
    if ('enum' in schema || 'const' in schema) {
      this.#alone(path, 'enum' in schema ? 'enum' : 'const', validation, ['type', 'enum', 'const'])
      return this.#values(schema, types, path)
    }
    const nodes = [...types].map((t) => this.#typed(t, schema, path))
    return nodes.length === 1 ? nodes[0]! : { kind: 'union', options: nodes }
  }

  /** Fails when `keyword` has siblings other than `allowed` (their meaning would be "all of"). */
  #alone(path: readonly string[], keyword: string, present: string[], allowed: string[]): void {
    const other = present.find((k) => k !== keyword && !allowed.includes(k))
    if (other !== undefined) this.fail(path, `"${keyword}" cannot be combined with "${other}" here`)
  }

  #types(schema: Schema, path: readonly string[]): Set<TypeName> {
    const type = schema.type
    if (type === undefined) {
      // No type: generate the types the keywords speak of (any value when none does).
      const implied = new Set<TypeName>()
      for (const [t, keys] of Object.entries(BY_TYPE)) {
        if (keys.some((k) => k in schema)) implied.add(t as TypeName)
      }
      return implied.size > 0 ? implied : new Set(TYPES)
    }
    const list = Array.isArray(type) ? type : [type]
    if (list.length === 0) this.fail([...path, 'type'], 'must name at least one type')
    for (const t of list) {
      if (!TYPES.includes(t as TypeName))
        this.fail([...path, 'type'], `unknown type ${JSON.stringify(t)}; use one of ${TYPES.join(', ')}`)
    }
    return new Set(list as TypeName[])
  }

  #values(schema: Schema, types: Set<TypeName>, path: readonly string[]): SchemaNode {
    let values: unknown[]
    if ('enum' in schema) {
      if (!Array.isArray(schema.enum) || schema.enum.length === 0)
        this.fail([...path, 'enum'], 'must be a non-empty array')
      values = schema.enum
      if ('const' in schema) {
        const text = JSON.stringify(schema.const)
        values = values.filter((v) => JSON.stringify(v) === text)
      }
    } else {
      values = [schema.const]
    }
    const texts = [
      ...new Set(
        values
          .filter((v) => types.has(typeOf(v)) || (types.has('number') && typeOf(v) === 'integer'))
          .map((v) => JSON.stringify(v)),
      ),
    ]
    if (texts.length === 0) this.fail(path, 'no value of "enum"/"const" fits "type"')
    return { kind: 'values', texts }
  }

  #typed(type: TypeName, schema: Schema, path: readonly string[]): SchemaNode {
    switch (type) {
      case 'string': {
        const minLength = this.#count(schema, 'minLength', path, MAX_MIN_LENGTH) ?? 0
        const maxLength = this.#count(schema, 'maxLength', path) ?? Number.POSITIVE_INFINITY
        if (minLength > maxLength) this.fail(path, '"minLength" is larger than "maxLength"')
        return { kind: 'string', minLength, maxLength }
      }
      case 'number':
      case 'integer':
        return { kind: 'number', integer: type === 'integer', bounds: this.#bounds(schema, path, type) }
      case 'boolean':
        return { kind: 'values', texts: ['true', 'false'] }
      case 'null':
        return { kind: 'values', texts: ['null'] }
      case 'object':
        return this.#object(schema, path)
      case 'array':
        return this.#array(schema, path)
    }
  }

  #count(
    schema: Schema,
    key: string,
    path: readonly string[],
    max = Number.MAX_SAFE_INTEGER,
  ): number | undefined {
    const v = schema[key]
    if (v === undefined) return undefined
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0)
      this.fail([...path, key], 'must be a non-negative integer')
    if (v > max) this.fail([...path, key], `at most ${max} is supported`)
    return v
  }

  #bounds(schema: Schema, path: readonly string[], type: 'number' | 'integer'): NumberBounds | undefined {
    const get = (key: string) => {
      const v = schema[key]
      if (v === undefined) return undefined
      if (typeof v !== 'number' || !Number.isFinite(v))
        this.fail([...path, key], 'must be a number (the draft-04 boolean form is not supported)')
      return v
    }
    const bounds = {
      minimum: get('minimum'),
      maximum: get('maximum'),
      exclusiveMinimum: get('exclusiveMinimum'),
      exclusiveMaximum: get('exclusiveMaximum'),
    }
    if (Object.values(bounds).every((v) => v === undefined)) return undefined
    const { lo, hi } = integerRange(bounds)
    if (Math.max(lo, -MAX_BOUNDED) > Math.min(hi, MAX_BOUNDED)) {
      this.fail(
        path,
        type === 'integer'
          ? `no integer of at most 15 digits lies within the bounds`
          : 'no integer of at most 15 digits lies within the bounds; a bounded number keeps its integer part in range here, so a range such as 0.2..0.8 is not supported',
      )
    }
    return bounds
  }

  #object(schema: Schema, path: readonly string[]): SchemaNode {
    const properties = schema.properties ?? {}
    if (!isObject(properties)) this.fail([...path, 'properties'], 'must be an object of schemas')
    const required = schema.required ?? []
    if (
      !Array.isArray(required) ||
      !required.every((k) => typeof k === 'string') ||
      new Set(required).size !== required.length
    )
      this.fail([...path, 'required'], 'must be an array of distinct strings')
    const additional = schema.additionalProperties
    if (additional !== undefined && typeof additional !== 'boolean')
      this.fail([...path, 'additionalProperties'], 'only true or false is supported here')
    const props: PropNode[] = Object.entries(properties).map(([key, sub]) => ({
      key,
      node: this.compile(sub, [...path, 'properties', key]),
      required: required.includes(key),
    }))
    for (const key of required as string[]) {
      if (key in properties) continue
      if (additional === false)
        this.fail(
          [...path, 'required'],
          `"${key}" is required but not in "properties" and "additionalProperties" is false`,
        )
      props.push({ key, node: ANY, required: true })
    }
    return { kind: 'object', props, free: props.length === 0 && additional !== false }
  }

  #array(schema: Schema, path: readonly string[]): SchemaNode {
    const prefixItems = schema.prefixItems ?? []
    if (!Array.isArray(prefixItems)) this.fail([...path, 'prefixItems'], 'must be an array of schemas')
    if (Array.isArray(schema.items))
      this.fail([...path, 'items'], 'must be a schema (use "prefixItems" for tuples)')
    const prefix = prefixItems.map((s, i) => this.compile(s, [...path, 'prefixItems', String(i)]))
    const items = schema.items === false ? undefined : this.compile(schema.items ?? true, [...path, 'items'])
    const minItems = this.#count(schema, 'minItems', path, MAX_MIN_ITEMS) ?? 0
    let maxItems = this.#count(schema, 'maxItems', path) ?? Number.POSITIVE_INFINITY
    if (items === undefined) maxItems = Math.min(maxItems, prefix.length)
    if (minItems > maxItems) this.fail(path, '"minItems" is larger than the number of items allowed')
    return { kind: 'array', prefix, items, minItems, maxItems }
  }

  #ref(ref: unknown, path: readonly string[]): SchemaNode {
    if (typeof ref !== 'string' || !/^#(\/|$)/.test(ref))
      this.fail([...path, '$ref'], `must point into this schema ("#/$defs/name"); got ${JSON.stringify(ref)}`)
    let tokens: string[]
    try {
      tokens = decodeURIComponent(ref.slice(1))
        .split('/')
        .slice(1)
        .map((t) => t.replaceAll('~1', '/').replaceAll('~0', '~'))
    } catch {
      return this.fail([...path, '$ref'], `${JSON.stringify(ref)} is not a valid JSON pointer`)
    }
    const key = pointer(tokens)
    const known = this.#refs.get(key)
    if (known !== undefined) return known
    const node: SchemaNode & { kind: 'ref' } = { kind: 'ref', ref, target: undefined }
    this.#refs.set(key, node)
    let target: unknown = this.#root
    for (const t of tokens) {
      target = isObject(target) || Array.isArray(target) ? (target as Schema)[t] : undefined
      if (target === undefined) this.fail([...path, '$ref'], `${JSON.stringify(ref)} points to nothing`)
    }
    node.target = this.compile(target, tokens)
    return node
  }

  /** Fails on a `$ref` that reaches itself through `anyOf`s and `$ref`s alone (no text in between). */
  checkCycles(root: SchemaNode): void {
    const all = new Set<SchemaNode>()
    const collect = (node: SchemaNode): void => {
      if (all.has(node)) return
      all.add(node)
      for (const child of children(node)) collect(child)
    }
    collect(root)
    const state = new Map<SchemaNode, 'open' | 'done'>()
    const visit = (node: SchemaNode): void => {
      const seen = state.get(node)
      if (seen === 'done') return
      if (seen === 'open') {
        const ref = node.kind === 'ref' ? node.ref : '#'
        throw new GrammarSchemaError(
          `${this.#label}: "$ref" ${JSON.stringify(ref)} refers to itself without an object or array in between`,
        )
      }
      state.set(node, 'open')
      if (node.kind === 'union') node.options.forEach(visit)
      if (node.kind === 'ref' && node.target !== undefined) visit(node.target)
      state.set(node, 'done')
    }
    for (const node of all) visit(node)
  }
}

function children(node: SchemaNode): SchemaNode[] {
  switch (node.kind) {
    case 'union':
      return node.options
    case 'ref':
      return node.target === undefined ? [] : [node.target]
    case 'object':
      return node.props.map((p) => p.node)
    case 'array':
      return node.items === undefined ? node.prefix : [...node.prefix, node.items]
    default:
      return []
  }
}

function typeOf(v: unknown): TypeName {
  if (v === null) return 'null'
  if (Array.isArray(v)) return 'array'
  if (typeof v === 'number') return Number.isInteger(v) ? 'integer' : 'number'
  return typeof v as TypeName
}

/** A JSON pointer for messages: `/properties/age`, `/` for the root. */
function pointer(path: readonly string[]): string {
  return path.length === 0
    ? '/'
    : path.map((t) => `/${t.replaceAll('~', '~0').replaceAll('/', '~1')}`).join('')
}
