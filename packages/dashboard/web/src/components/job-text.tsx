import { useLayoutEffect, useRef } from 'preact/hooks'

/** A job's generated text, kept scrolled to its end while it grows. */
export function JobText({ text }: { text: string }) {
  const box = useRef<HTMLPreElement>(null)
  useLayoutEffect(() => {
    const el = box.current
    if (el !== null) el.scrollTop = el.scrollHeight
  }, [text])
  return (
    <pre class="job-text" data-testid="job-text" ref={box}>
      {text}
    </pre>
  )
}
