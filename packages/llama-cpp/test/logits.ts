// Comparing two engines' logits in the parity tests (the greedy choice itself is `argmax` of
// @meshnet/engine).

/** The gap between the two largest logits of a row: how close a greedy choice is to a tie. */
export function topGap(row: Float32Array): number {
  let a = Number.NEGATIVE_INFINITY
  let b = Number.NEGATIVE_INFINITY
  for (const v of row) {
    if (v > a) {
      b = a
      a = v
    } else if (v > b) b = v
  }
  return a - b
}
