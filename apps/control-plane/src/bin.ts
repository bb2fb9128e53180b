#!/usr/bin/env node
// `mesh-control-plane`. The Node.js version is checked before anything loads: on an older Node the program's
// imports (node:sqlite, Float16Array, ...) would fail first without saying what is needed. So this
// file imports nothing statically and has no top-level await, which any Node with ES modules runs;
// the message is @meshnet/core's nodeVersionProblem word for word (apps/node/test/node-version.test.ts).
const program = { command: 'mesh-control-plane', packageName: '@meshnet/control-plane' }
const found = process.versions.node
if (Number(found.split('.')[0]) < 24) {
  process.stderr.write(
    `${program.command} needs Node.js 24 or newer; this is Node.js ${found}.\n` +
      'Run it with Node 24 from npm, without installing anything system-wide:\n' +
      `  npx --yes -p node@24 -p ${program.packageName} ${program.command} ...\n` +
      "or install Node 24 (nvm install 24, fnm, or your system's packages).\n",
  )
  process.exitCode = 1
} else {
  // V8's compile cache (Node's default folder in the temp dir; NODE_DISABLE_COMPILE_CACHE=1 turns it
  // off) halves the start of every later run: most of a command's start is compiling its modules.
  void import('node:module')
    .then((module) => module.enableCompileCache?.())
    .then(() => import('@meshnet/core'))
    .then(({ runProgram }) => runProgram(program, () => import('./cli.ts')))
}

export {}
