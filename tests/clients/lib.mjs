// Shared by the scenario scripts (one script per scenario), driven by tests/nodejs.py.
//
// In:  one JSON object as the first command-line argument (`config`), e.g.
//      {"http": "http://127.0.0.1:8123/graphql", "ws": "ws://127.0.0.1:8123/graphql",
//       "key": "..."} plus whatever the scenario needs; further lines on stdin
//      (`nextInput()`) when the test has to tell the script to go on.
// Out: JSON lines on stdout, {"type": ..., "value": ...}: `emit()` for progress
//      (e.g. "subscribed", "change") and exactly one `finish()` ({"type": "result"}) at the
//      end. Every console.* call (Apollo's warnings, graphql-ws' errors) goes to stderr as
//      "[console.LEVEL] text" so the test can assert there were none.
import { createInterface } from 'node:readline';
import { format, inspect } from 'node:util';

export const config = JSON.parse(process.argv[2] ?? '{}');

for (const level of ['debug', 'log', 'info', 'warn', 'error']) {
  console[level] = (...args) => {
    process.stderr.write(`[console.${level}] ${format(...args)}\n`);
  };
}

export function emit(type, value = null) {
  // A pipe's writes are synchronous on Linux, so nothing is lost by process.exit().
  process.stdout.write(`${JSON.stringify({ type, value })}\n`);
}

export function finish(value) {
  emit('result', value);
  process.exit(0);
}

/** A failure as text: graphql-ws rejects with a CloseEvent or a list of GraphQL errors. */
export function describe(error) {
  if (error instanceof Error) return error.stack ?? error.message;
  if (error?.error instanceof Error) return describe(error.error); // a WebSocket ErrorEvent
  if (error && typeof error === 'object' && 'code' in error && 'reason' in error) {
    return `socket closed: ${error.code} ${error.reason}`;
  }
  return inspect(error, { depth: 4 });
}

function die(error) {
  emit('failed', describe(error));
  process.exit(1);
}
process.on('uncaughtException', die);
process.on('unhandledRejection', die);

const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

/** The next line the test writes on stdin, parsed as JSON. */
export async function nextInput() {
  const { value, done } = await lines.next();
  if (done) throw new Error('stdin closed while waiting for the test');
  return JSON.parse(value);
}

/** Credentials as a browser or mobile app sends them: a header on HTTP, the
 * connection_init payload on WebSocket. */
export const headers = config.key ? { authorization: `Bearer ${config.key}` } : {};
export const connectionParams = config.key ? { Authorization: `Bearer ${config.key}` } : {};

/** Rejects after `ms` so a script never hangs on a silent server. */
export function deadline(ms, what) {
  return new Promise((_, reject) => {
    setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms).unref();
  });
}
