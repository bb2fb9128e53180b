import { END, type Frame } from './automaton.ts'
import type { NumberBounds } from './schema-compile.ts'

const QUOTE = 0x22
const BACKSLASH = 0x5c

const S = {
  OPEN: 0,
  BODY: 1,
  ESC: 2,
  HEX: 3,
  UTF8: 4,
} as const

/** A JSON string of `minLength`..`maxLength` code points: valid escapes, no raw control bytes, valid UTF-8. */
export class StringSpec {
  readonly minLength: number
  readonly maxLength: number
  readonly open: Frame
  readonly #bodies: StringFrame[] = []

  constructor(minLength: number, maxLength: number) {
    this.minLength = minLength
    this.maxLength = maxLength
    this.open = new StringFrame(this, S.OPEN, 0, 0, 0)
  }

  /** Inside the string after `count` code points (shared frames: the same count, the same frame). */
  body(count: number): StringFrame {
    // Without a maximum, counts past the minimum behave alike.
    const c = this.maxLength === Number.POSITIVE_INFINITY ? Math.min(count, this.minLength) : count
    let frame = this.#bodies[c]
    if (frame === undefined) {
      frame = new StringFrame(this, S.BODY, c, 0, 0)
      this.#bodies[c] = frame
    }
    return frame
  }
}

/**
 * A string frame. `count`: code points so far (one in progress counts); `a`: hex digits read after
 * `\u`, or continuation bytes still to come; `b`: for HEX, 1 when the next digit must be 0-7 (no
 * surrogates); for UTF8, the allowed range of the next byte (lo << 8 | hi).
 */
class StringFrame implements Frame {
  readonly spec: StringSpec
  readonly phase: number
  readonly count: number
  readonly a: number
  readonly b: number
  readonly min: number
  readonly ends = false
  readonly reads = true
  readonly literal = false
  readonly call = undefined

  constructor(spec: StringSpec, phase: number, count: number, a: number, b: number) {
    this.spec = spec
    this.phase = phase
    this.count = count
    this.a = a
    this.b = b
    const rest = Math.max(0, spec.minLength - count) + 1
    this.min =
      phase === S.OPEN
        ? spec.minLength + 2
        : phase === S.BODY
          ? rest
          : phase === S.ESC
            ? rest + 1
            : phase === S.HEX
              ? rest + 4 - a
              : rest + a
  }

  feed(byte: number): Frame | undefined {
    const spec = this.spec
    switch (this.phase) {
      case S.OPEN:
        return byte === QUOTE ? spec.body(0) : undefined
      case S.BODY: {
        if (byte === QUOTE) return this.count >= spec.minLength ? END : undefined
        if (this.count >= spec.maxLength) return undefined
        const count = this.count + 1
        if (byte === BACKSLASH) return new StringFrame(spec, S.ESC, count, 0, 0)
        if (byte >= 0x20 && byte < 0x80) return spec.body(count)
        // UTF-8 lead bytes, with the range of the first continuation byte that excludes overlong
        // forms, surrogates and code points above U+10FFFF.
        if (byte < 0xc2 || byte > 0xf4) return undefined
        if (byte < 0xe0) return this.#utf8(count, 1, 0x80, 0xbf)
        if (byte === 0xe0) return this.#utf8(count, 2, 0xa0, 0xbf)
        if (byte === 0xed) return this.#utf8(count, 2, 0x80, 0x9f)
        if (byte < 0xf0) return this.#utf8(count, 2, 0x80, 0xbf)
        if (byte === 0xf0) return this.#utf8(count, 3, 0x90, 0xbf)
        if (byte === 0xf4) return this.#utf8(count, 3, 0x80, 0x8f)
        return this.#utf8(count, 3, 0x80, 0xbf)
      }
      case S.UTF8: {
        if (byte < this.b >> 8 || byte > (this.b & 0xff)) return undefined
        return this.a === 1 ? spec.body(this.count) : this.#utf8(this.count, this.a - 1, 0x80, 0xbf)
      }
      case S.ESC:
        if (byte === 0x75) return new StringFrame(spec, S.HEX, this.count, 0, 0)
        return SIMPLE_ESCAPES.includes(byte) ? spec.body(this.count) : undefined
      default: {
        const digit = hexValue(byte)
        if (digit < 0 || (this.b === 1 && digit > 7)) return undefined
        if (this.a === 3) return spec.body(this.count)
        return new StringFrame(spec, S.HEX, this.count, this.a + 1, this.a === 0 && digit === 0xd ? 1 : 0)
      }
    }
  }

  #utf8(count: number, remaining: number, lo: number, hi: number): StringFrame {
    return new StringFrame(this.spec, S.UTF8, count, remaining, (lo << 8) | hi)
  }
}

const SIMPLE_ESCAPES = [...'"\\/bfnrt'].map((c) => c.charCodeAt(0))

function hexValue(byte: number): number {
  if (byte >= 0x30 && byte <= 0x39) return byte - 0x30
  if (byte >= 0x61 && byte <= 0x66) return byte - 0x61 + 10
  if (byte >= 0x41 && byte <= 0x46) return byte - 0x41 + 10
  return -1
}

const P = {
  START: 0,
  MINUS: 1,
  ZERO: 2,
  INT: 3,
  DOT: 4,
  FRAC: 5,
  E: 6,
  ESIGN: 7,
  EXP: 8,
} as const

/** Digits of an unbounded number's integer part, fraction and exponent. */
const INT_DIGITS = 16
const FRAC_DIGITS = 16
const EXP_DIGITS = 3
/** Significant digits of a bounded number: few enough that the text parses exactly. */
const BOUNDED_DIGITS = 15
/** Largest magnitude of a bounded number's integer part. */
export const MAX_BOUNDED = 10 ** BOUNDED_DIGITS - 1

/**
 * A JSON number (or integer) with bounded digits. With bounds, the integer part keeps to the
 * integers of the range (digit by digit), a fraction is allowed only when every `I.xxx` is in the
 * range, and there is no exponent.
 */
export class NumberSpec {
  readonly integer: boolean
  readonly bounds: NumberBounds | undefined
  /** The integers of the range (clamped to 15 digits). */
  readonly lo: number
  readonly hi: number
  readonly start: Frame
  readonly minStart: number
  readonly minAfterMinus: number
  readonly #shared = new Map<number, NumberFrame>()

  constructor(integer: boolean, bounds: NumberBounds | undefined) {
    this.integer = integer
    this.bounds = bounds
    const r = bounds === undefined ? undefined : integerRange(bounds)
    this.lo = Math.max(r?.lo ?? -MAX_BOUNDED, -MAX_BOUNDED)
    this.hi = Math.min(r?.hi ?? MAX_BOUNDED, MAX_BOUNDED)
    let minStart = Number.POSITIVE_INFINITY
    let minAfterMinus = Number.POSITIVE_INFINITY
    if (bounds === undefined) {
      minStart = 1
      minAfterMinus = 1
    } else {
      if (this.inRange(0)) {
        minStart = 1
        minAfterMinus = 1
      }
      for (let k = BOUNDED_DIGITS; k >= 1; k--) {
        const a = k === 1 ? 1 : 10 ** (k - 1)
        const b = 10 ** k - 1
        if (a <= this.hi && b >= this.lo) minStart = Math.min(minStart, k)
        if (-b <= this.hi && -a >= this.lo) {
          minStart = Math.min(minStart, k + 1)
          minAfterMinus = Math.min(minAfterMinus, k)
        }
      }
    }
    this.minStart = minStart
    this.minAfterMinus = minAfterMinus
    this.start = this.frame(P.START, false, 0, 0)
  }

  inRange(value: number): boolean {
    return value >= this.lo && value <= this.hi
  }

  /** Fewest more integer digits after `digits` (value `v`) that give an integer of the range; -1: none. */
  extraDigits(neg: boolean, v: number, digits: number): number {
    if (v === 0) return this.inRange(0) ? 0 : -1
    for (let j = 0; digits + j <= BOUNDED_DIGITS; j++) {
      const p = 10 ** j
      const a = v * p
      const b = a + p - 1
      const [x, y] = neg ? [-b, -a] : [a, b]
      if (x <= this.hi && y >= this.lo) return j
    }
    return -1
  }

  /** Whether `±i.xxx` is in the range for every fraction (so a fraction may follow `±i`). */
  fractionAllowed(neg: boolean, i: number): boolean {
    if (this.integer) return false
    const b = this.bounds
    if (b === undefined) return true
    const [low, high] = neg ? [-(i + 1), -i] : [i, i + 1]
    // Positive: values in [i, i+1); negative: in (-(i+1), -i].
    const lowOk = neg
      ? (b.minimum === undefined || low >= b.minimum) &&
        (b.exclusiveMinimum === undefined || low >= b.exclusiveMinimum)
      : (b.minimum === undefined || low >= b.minimum) &&
        (b.exclusiveMinimum === undefined || low > b.exclusiveMinimum)
    const highOk = neg
      ? (b.maximum === undefined || high <= b.maximum) &&
        (b.exclusiveMaximum === undefined || high < b.exclusiveMaximum)
      : (b.maximum === undefined || high <= b.maximum) &&
        (b.exclusiveMaximum === undefined || high <= b.exclusiveMaximum)
    return lowOk && highOk
  }

  /** A frame; unbounded ones are shared (their value does not matter). */
  frame(phase: number, neg: boolean, v: number, n: number): NumberFrame {
    if (
      this.bounds !== undefined &&
      (phase === P.INT || phase === P.ZERO || phase === P.FRAC || phase === P.DOT)
    )
      return new NumberFrame(this, phase, neg, v, n)
    const key = phase * 64 + n
    let frame = this.#shared.get(key)
    if (frame === undefined) {
      frame = new NumberFrame(this, phase, false, 0, n)
      this.#shared.set(key, frame)
    }
    return frame
  }
}

/** The integers within `bounds` (lo > hi when none). */
export function integerRange(bounds: NumberBounds): { lo: number; hi: number } {
  let lo = Number.NEGATIVE_INFINITY
  let hi = Number.POSITIVE_INFINITY
  if (bounds.minimum !== undefined) lo = Math.max(lo, Math.ceil(bounds.minimum))
  if (bounds.exclusiveMinimum !== undefined) lo = Math.max(lo, Math.floor(bounds.exclusiveMinimum) + 1)
  if (bounds.maximum !== undefined) hi = Math.min(hi, Math.floor(bounds.maximum))
  if (bounds.exclusiveMaximum !== undefined) hi = Math.min(hi, Math.ceil(bounds.exclusiveMaximum) - 1)
  return { lo, hi }
}

/** A number frame. `v`: the integer part's value (bounded numbers); `n`: digits of the current run. */
class NumberFrame implements Frame {
  readonly spec: NumberSpec
  readonly phase: number
  readonly neg: boolean
  readonly v: number
  readonly n: number
  readonly min: number
  readonly ends: boolean
  readonly reads = true
  readonly literal = false
  readonly call = undefined
  /** Integer digits, kept through the fraction of a bounded number. */
  readonly intDigits: number

  constructor(spec: NumberSpec, phase: number, neg: boolean, v: number, n: number, intDigits = n) {
    this.spec = spec
    this.phase = phase
    this.neg = neg
    this.v = v
    this.n = n
    this.intDigits = intDigits
    const bounded = spec.bounds !== undefined
    const whole = phase === P.INT || phase === P.ZERO
    this.ends = (whole && (!bounded || spec.inRange(neg ? -v : v))) || phase === P.FRAC || phase === P.EXP
    this.min = this.ends
      ? 0
      : phase === P.START
        ? spec.minStart
        : phase === P.MINUS
          ? spec.minAfterMinus
          : whole
            ? spec.extraDigits(neg, v, n)
            : 1
  }

  feed(byte: number): Frame | undefined {
    const spec = this.spec
    const bounded = spec.bounds !== undefined
    const digit = byte >= 0x30 && byte <= 0x39 ? byte - 0x30 : -1
    const exponent = (byte === 0x65 || byte === 0x45) && !spec.integer && !bounded
    switch (this.phase) {
      case P.START:
        if (byte === 0x2d)
          return spec.minAfterMinus < Number.POSITIVE_INFINITY ? spec.frame(P.MINUS, true, 0, 0) : undefined
        return this.#first(false, digit)
      case P.MINUS:
        return this.#first(true, digit)
      case P.INT:
        if (digit >= 0) {
          if (this.n >= (bounded ? BOUNDED_DIGITS : INT_DIGITS)) return undefined
          return this.#whole(P.INT, this.neg, this.v * 10 + digit, this.n + 1)
        }
        return this.#afterWhole(byte, exponent)
      case P.ZERO:
        return this.#afterWhole(byte, exponent)
      case P.DOT:
      case P.FRAC: {
        if (digit >= 0) {
          const frac = this.phase === P.DOT ? 1 : this.n + 1
          const limit = bounded ? BOUNDED_DIGITS - this.intDigits : FRAC_DIGITS
          if (frac > limit) return undefined
          return bounded
            ? new NumberFrame(spec, P.FRAC, this.neg, this.v, frac, this.intDigits)
            : spec.frame(P.FRAC, false, 0, frac)
        }
        return this.phase === P.FRAC && exponent ? spec.frame(P.E, false, 0, 0) : undefined
      }
      case P.E:
        if (byte === 0x2b || byte === 0x2d) return spec.frame(P.ESIGN, false, 0, 0)
        return digit >= 0 ? spec.frame(P.EXP, false, 0, 1) : undefined
      case P.ESIGN:
        return digit >= 0 ? spec.frame(P.EXP, false, 0, 1) : undefined
      default:
        return digit >= 0 && this.n < EXP_DIGITS ? spec.frame(P.EXP, false, 0, this.n + 1) : undefined
    }
  }

  #first(neg: boolean, digit: number): Frame | undefined {
    if (digit < 0) return undefined
    return this.#whole(digit === 0 ? P.ZERO : P.INT, neg, digit, 1)
  }

  #whole(phase: number, neg: boolean, v: number, n: number): Frame | undefined {
    if (this.spec.bounds !== undefined && this.spec.extraDigits(neg, v, n) < 0) return undefined
    return this.spec.frame(phase, neg, v, n)
  }

  #afterWhole(byte: number, exponent: boolean): Frame | undefined {
    const spec = this.spec
    if (byte === 0x2e) {
      if (!spec.fractionAllowed(this.neg, this.v)) return undefined
      if (spec.bounds !== undefined && this.n >= BOUNDED_DIGITS) return undefined
      return spec.bounds === undefined
        ? spec.frame(P.DOT, false, 0, 0)
        : new NumberFrame(spec, P.DOT, this.neg, this.v, 0, this.n)
    }
    return exponent ? spec.frame(P.E, false, 0, 0) : undefined
  }
}
