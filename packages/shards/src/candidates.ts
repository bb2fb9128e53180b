/**
 * The `k` best tokens of a row of logits, ordered as llama.cpp's top-k orders them (logit
 * descending, lower id first on ties), so that a sampler given only these candidates picks what it
 * would pick from the whole row. k = 1 is greedy argmax.
 */
export function topCandidates(logits: Float32Array, k: number): { ids: Uint32Array; logits: Float32Array } {
  const vocab = logits.length
  const count = Math.min(k, vocab)
  const ids = new Uint32Array(count)
  const values = new Float32Array(count)
  if (count === 0) return { ids, logits: values }
  if (count === 1) {
    let best = 0
    let bestValue = logits[0]!
    for (let i = 1; i < vocab; i++) {
      const v = logits[i]!
      if (v > bestValue) {
        best = i
        bestValue = v
      }
    }
    ids[0] = best
    values[0] = bestValue
    return { ids, logits: values }
  }
  const all = new Uint32Array(vocab)
  for (let i = 0; i < vocab; i++) all[i] = i
  all.sort((a, b) => logits[b]! - logits[a]! || a - b)
  for (let i = 0; i < count; i++) {
    ids[i] = all[i]!
    values[i] = logits[all[i]!]!
  }
  return { ids, logits: values }
}

/** A row of `vocab` logits holding the candidates and -Infinity elsewhere (what the sampler reads). */
export function sparseLogits(vocab: number, ids: Uint32Array, logits: Float32Array): Float32Array {
  const row = new Float32Array(vocab).fill(Number.NEGATIVE_INFINITY)
  for (let i = 0; i < ids.length; i++) row[ids[i]!] = logits[i]!
  return row
}
