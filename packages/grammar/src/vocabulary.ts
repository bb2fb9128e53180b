/**
 * What a token adds to a generated text: its UTF-8 bytes, and whether it is a control token (whose
 * bytes are its text as templates write it). `@meshnet/engine`'s `TokenPiece`, structurally.
 */
export interface TokenPiece {
  bytes: Uint8Array
  control: boolean
}

/**
 * What a vocabulary is read from: a model's tokenizer (`@meshnet/engine`'s `Tokenizer` is one).
 * Declared here so that this package needs no engine.
 */
export interface VocabularySource {
  readonly vocabSize: number
  isEog(id: number): boolean
  piece(id: number): TokenPiece
}

/**
 * The tokens a constraint chooses among: each token's bytes as generated text (`piece`), and the
 * end-of-generation tokens. Build one per model with `constraintVocabulary(tokenizer)` and reuse
 * it: its token index is built once and cached on it.
 */
export interface ConstraintVocabulary {
  readonly size: number
  piece(id: number): TokenPiece
  readonly eog: readonly number[]
}

const byTokenizer = new WeakMap<VocabularySource, ConstraintVocabulary>()

/** The vocabulary of a tokenizer (cached per tokenizer). */
export function constraintVocabulary(tokenizer: VocabularySource): ConstraintVocabulary {
  let vocabulary = byTokenizer.get(tokenizer)
  if (vocabulary === undefined) {
    const eog: number[] = []
    for (let id = 0; id < tokenizer.vocabSize; id++) if (tokenizer.isEog(id)) eog.push(id)
    vocabulary = { size: tokenizer.vocabSize, piece: (id) => tokenizer.piece(id), eog }
    byTokenizer.set(tokenizer, vocabulary)
  }
  return vocabulary
}

/**
 * A vocabulary prepared for masking: every token's bytes, and a byte trie of the tokens that are
 * text (not control, not end-of-generation, not empty) so that one walk with the automaton visits
 * each shared prefix once. Children are linked lists in byte order; `height` is the longest path
 * below a node (how much a walk below it can still shorten the completion).
 */
export interface TokenIndex {
  readonly size: number
  readonly pieces: readonly Uint8Array[]
  readonly control: Uint8Array
  readonly eog: Uint8Array
  readonly eogIds: readonly number[]
  /** Control tokens with a text (they may match a literal part). */
  readonly controlIds: readonly number[]
  readonly first: Int32Array
  readonly next: Int32Array
  readonly byte: Uint8Array
  readonly height: Int32Array
  readonly idStart: Int32Array
  readonly idCount: Int32Array
  readonly ids: Int32Array
}

const indexes = new WeakMap<ConstraintVocabulary, TokenIndex>()

/** The token index of a vocabulary (built once per vocabulary object). */
export function tokenIndex(vocabulary: ConstraintVocabulary): TokenIndex {
  let index = indexes.get(vocabulary)
  if (index === undefined) {
    index = buildIndex(vocabulary)
    indexes.set(vocabulary, index)
  }
  return index
}

function buildIndex(vocabulary: ConstraintVocabulary): TokenIndex {
  const size = vocabulary.size
  const pieces: Uint8Array[] = []
  const control = new Uint8Array(size)
  const eog = new Uint8Array(size)
  const eogIds = vocabulary.eog.filter((id) => id >= 0 && id < size)
  for (const id of eogIds) eog[id] = 1
  const controlIds: number[] = []
  const text: number[] = []
  let total = 0
  for (let id = 0; id < size; id++) {
    const piece = vocabulary.piece(id)
    pieces.push(piece.bytes)
    if (eog[id] === 1 || piece.bytes.length === 0) continue
    if (piece.control) {
      control[id] = 1
      controlIds.push(id)
    } else {
      text.push(id)
      total += piece.bytes.length
    }
  }
  const keys = text.map((id) => Buffer.from(pieces[id]!.buffer, pieces[id]!.byteOffset, pieces[id]!.length))
  const order = text
    .map((_, i) => i)
    .sort((a, b) => Buffer.compare(keys[a]!, keys[b]!) || text[a]! - text[b]!)
  const nodes = total + 1
  const first = new Int32Array(nodes).fill(-1)
  const next = new Int32Array(nodes).fill(-1)
  const last = new Int32Array(nodes).fill(-1)
  const parent = new Int32Array(nodes).fill(-1)
  const byte = new Uint8Array(nodes)
  const idStart = new Int32Array(nodes)
  const idCount = new Int32Array(nodes)
  const ids = new Int32Array(text.length)
  const path = [0]
  let prev: Buffer = Buffer.alloc(0)
  let count = 1
  order.forEach((k, at) => {
    const key = keys[k]!
    let lcp = 0
    while (lcp < key.length && lcp < prev.length && key[lcp] === prev[lcp]) lcp++
    let node = path[lcp]!
    for (let j = lcp; j < key.length; j++) {
      const child = count++
      byte[child] = key[j]!
      parent[child] = node
      if (last[node] === -1) first[node] = child
      else next[last[node]!] = child
      last[node] = child
      path[j + 1] = child
      node = child
    }
    if (idCount[node] === 0) idStart[node] = at
    idCount[node]!++
    ids[at] = text[k]!
    prev = key
  })
  const height = new Int32Array(count)
  for (let node = count - 1; node > 0; node--) {
    const p = parent[node]!
    height[p] = Math.max(height[p]!, height[node]! + 1)
  }
  return {
    size,
    pieces,
    control,
    eog,
    eogIds,
    controlIds,
    first: first.subarray(0, count),
    next: next.subarray(0, count),
    byte: byte.subarray(0, count),
    height,
    idStart: idStart.subarray(0, count),
    idCount: idCount.subarray(0, count),
    ids,
  }
}
