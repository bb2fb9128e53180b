import { describe, expect, it } from 'vitest'
import { nodeVersionProblem, REQUIRED_NODE_MAJOR } from '../src/node-version.ts'

describe('nodeVersionProblem', () => {
  const program = { command: 'mesh', packageName: '@meshnet/node' }

  it('accepts the required major and newer', () => {
    expect(nodeVersionProblem(program, `${REQUIRED_NODE_MAJOR}.0.0`)).toBeUndefined()
    expect(nodeVersionProblem(program, `${REQUIRED_NODE_MAJOR + 1}.2.3`)).toBeUndefined()
  })

  it('names the version found, the one needed and a way to run it with npx', () => {
    const problem = nodeVersionProblem(program, '20.20.2')
    expect(problem).toContain('mesh needs Node.js 24 or newer; this is Node.js 20.20.2.')
    expect(problem).toContain('npx --yes -p node@24 -p @meshnet/node mesh ...')
  })
})
