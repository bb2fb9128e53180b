/** The Node.js major version every Meshnet program needs (node:sqlite, WebAssembly relaxed SIMD, type stripping). */
export const REQUIRED_NODE_MAJOR = 24

/**
 * What is wrong with the running Node.js for a Meshnet program, or undefined when it will do: the
 * message names the version found, the one needed and how to get it without touching the system's.
 */
export function nodeVersionProblem(
  program: { command: string; packageName: string },
  version: string = process.versions.node,
): string | undefined {
  const major = Number(version.split('.')[0])
  if (major >= REQUIRED_NODE_MAJOR) return undefined
  return [
    `${program.command} needs Node.js ${REQUIRED_NODE_MAJOR} or newer; this is Node.js ${version}.`,
    `Run it with Node ${REQUIRED_NODE_MAJOR} from npm, without installing anything system-wide:`,
    `  npx --yes -p node@${REQUIRED_NODE_MAJOR} -p ${program.packageName} ${program.command} ...`,
    `or install Node ${REQUIRED_NODE_MAJOR} (nvm install ${REQUIRED_NODE_MAJOR}, fnm, or your system's packages).`,
  ].join('\n')
}

/**
 * A program's entry point: checks Node.js first (printing what is needed and exiting 1 on an older
 * one), then loads the program - only then, since its imports would fail first on an older Node -
 * and sets the exit code to what its `main` returns.
 */
export async function runProgram(
  program: { command: string; packageName: string },
  load: () => Promise<{ main(argv: string[]): Promise<number> }>,
): Promise<void> {
  const problem = nodeVersionProblem(program)
  if (problem !== undefined) {
    process.stderr.write(`${problem}\n`)
    process.exitCode = 1
    return
  }
  const { main } = await load()
  process.exitCode = await main(process.argv.slice(2))
}
