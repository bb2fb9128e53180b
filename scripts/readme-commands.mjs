// Prints the commands of the ```sh blocks in one section of a Markdown file, one line each, so that
// CI runs exactly what the README tells people to run. Plain JavaScript: it runs on any Node.
//   node scripts/readme-commands.mjs README.md "Quick start"
import { readFileSync } from 'node:fs'

const [file, heading] = process.argv.slice(2)
const lines = readFileSync(file, 'utf8').split('\n')
const start = lines.findIndex((line) => /^#+ /.test(line) && line.replace(/^#+ /, '').trim() === heading)
if (start === -1) {
  console.error(`no section "${heading}" in ${file}`)
  process.exit(1)
}
const end = lines.findIndex((line, i) => i > start && /^#{1,2} /.test(line))
let block
for (const line of lines.slice(start + 1, end === -1 ? undefined : end)) {
  if (block === undefined && line.trim() === '```sh') block = []
  else if (block !== undefined && line.trim() === '```') {
    console.log(block.join('\n'))
    block = undefined
  } else if (block !== undefined) block.push(line)
}
