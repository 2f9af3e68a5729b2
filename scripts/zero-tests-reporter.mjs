// A node:test reporter that fails the run when a test file ran no test (a file that defines
// none, or whose tests were never registered): Node 20 counts such a file as one passing test.
// It prints nothing else; the TAP reporter beside it prints the results.
export default async function* zeroTests(source) {
  const counts = new Map();
  for await (const event of source) {
    if ((event.type === 'test:pass' || event.type === 'test:fail') && event.data.file) {
      const { file, name } = event.data;
      if (!counts.has(file)) counts.set(file, 0);
      // A file with no test at all is reported as one test named after the file itself.
      if (name !== file) counts.set(file, counts.get(file) + 1);
    }
  }
  const empty = [...counts].filter(([, n]) => n === 0).map(([file]) => file);
  if (empty.length > 0) {
    process.exitCode = 1;
    yield `\ntest files that ran no test (each must run at least one):\n${empty.map((f) => `  ${f}`).join('\n')}\n`;
  }
}
