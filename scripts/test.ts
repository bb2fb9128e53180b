// The README's test command: lint, typecheck, then every test. Ends with a plain
// `N passed, N failed` line (failed checks count as failures) and exits non-zero on any failure.
import { spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

const root = join(import.meta.dirname, '..')
const run = (label: string, command: string, args: string[]): boolean => {
  console.log(`\n▶ ${label}: ${command} ${args.join(' ')}`)
  const result = spawnSync(command, args, { cwd: root, stdio: 'inherit' })
  if (result.status !== 0) console.log(`✗ ${label} failed (exit ${result.status ?? result.signal})`)
  return result.status === 0
}

const bin = (name: string) => join(root, 'node_modules', '.bin', name)
let failedChecks = 0
if (!run('lint', bin('biome'), ['check', '.'])) failedChecks++
if (!run('typecheck', bin('turbo'), ['run', 'typecheck', '--output-logs=errors-only'])) failedChecks++

const out = mkdtempSync(join(tmpdir(), 'meshnet-test-'))
const report = join(out, 'vitest.json')
const testsOk = run('tests', bin('vitest'), [
  'run',
  '--reporter=default',
  '--reporter=json',
  `--outputFile.json=${report}`,
  ...process.argv.slice(2),
])
let passed = 0
let failed = 0
let skipped = 0
try {
  const summary = JSON.parse(readFileSync(report, 'utf8')) as {
    numPassedTests: number
    numFailedTests: number
    numPendingTests: number
    numTodoTests: number
    testResults: Array<{ status: string; assertionResults: Array<{ status: string }> }>
  }
  passed = summary.numPassedTests
  // A failed test counts once; a file that failed without a failed test (it did not load, a hook
  // threw) counts as one more.
  const brokenFiles = summary.testResults.filter(
    (file) => file.status === 'failed' && !file.assertionResults.some((test) => test.status === 'failed'),
  ).length
  failed = summary.numFailedTests + brokenFiles
  skipped = summary.numPendingTests + summary.numTodoTests
} catch {
  failed++ // no report: the run itself broke
}
rmSync(out, { recursive: true, force: true })
if (!testsOk && failed === 0) failed++
failed += failedChecks
console.log(`\n${passed} passed, ${failed} failed${skipped > 0 ? `, ${skipped} skipped` : ''}`)
process.exit(failed === 0 ? 0 : 1)
