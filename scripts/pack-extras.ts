// The `prepack` step of every published package (`node ../../scripts/pack-extras.ts`, run by
// `pnpm pack` and `pnpm publish` in the package's folder): copies the repository's LICENSE and the
// docs/ pages that the package's source and README cite ("see docs/p2p-configuration.md") into the
// package, so that its tarball carries what its error messages point at. The copies are ignored by
// git and rewritten on every pack; each is written to a temporary name and renamed, so two packs of
// one package at the same time never ship a half-written file.
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync } from 'node:fs'
import { dirname, join, relative } from 'node:path'

const root = join(import.meta.dirname, '..')
const pkg = process.cwd()

/** Every file under `dir` whose name ends with `suffix`. */
function files(dir: string, suffix: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name)
    return entry.isDirectory() ? files(path, suffix) : entry.name.endsWith(suffix) ? [path] : []
  })
}

const texts = files(join(pkg, 'src'), '.ts').map((file) => readFileSync(file, 'utf8'))
if (existsSync(join(pkg, 'README.md'))) texts.push(readFileSync(join(pkg, 'README.md'), 'utf8'))
// `docs/x.md` or `../../docs/x.md`, not another site's `…/repo/docs/x.md`.
const cited = new Set(
  texts.flatMap((text) =>
    [...text.matchAll(/(?<![\w-]\/)\bdocs\/((?:[\w-]+\/)*[\w-]+\.md)\b/g)].map((m) => m[1]!),
  ),
)

function copy(from: string, to: string): void {
  mkdirSync(dirname(to), { recursive: true })
  const temporary = `${to}.${process.pid}.tmp`
  copyFileSync(from, temporary)
  renameSync(temporary, to)
}

copy(join(root, 'LICENSE'), join(pkg, 'LICENSE'))
const docs = join(pkg, 'docs')
for (const name of [...cited].sort()) {
  const from = join(root, 'docs', name)
  if (!existsSync(from)) throw new Error(`${pkg} cites docs/${name}, which is not in ${join(root, 'docs')}`)
  copy(from, join(docs, name))
}
// A page the package no longer cites leaves with the next pack.
if (existsSync(docs))
  for (const file of files(docs, '.md')) if (!cited.has(relative(docs, file))) rmSync(file, { force: true })
console.log(`pack-extras: LICENSE${[...cited].map((name) => `, docs/${name}`).join('')}`)
