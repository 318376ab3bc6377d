'use strict';
// One Node.js process per TypeScript/JavaScript context of Atoll's code interpreter.
//
// Requests: one JSON object per line on stdin: {id, code, timeout_ms, env}.
// Events: one JSON object per line on the fd named by ATOLL_EVENT_FD:
//   {type: "ready"} once, then per request {id, type: "stdout"|"stderr", data} as produced,
//   {id, type: "result", text, json?}, {id, type: "error", name, value, traceback},
//   and last {id, type: "done", execution_count}.
// process.stdout/stderr writes (console.log included) become events, so they share one ordered
// channel with the result; output of child processes still reaches the real fds 1 and 2.
//
// A cell is transpiled with the `typescript` package (transpileModule: no type checking), its
// top-level let/const/class become var so a cell can be run again, and it runs in one persistent
// vm context: the completion value of the last statement is the result. A cell that uses
// top-level await runs as an async function: its declarations are copied to the global scope when
// it ends (closures made in that cell keep the cell's own bindings), and its last expression
// statement is the result. Timeouts: the vm `timeout` for synchronous code; awaited code is
// abandoned (not stopped) at the deadline, and the service kills the process if it stops answering.

const fs = require('fs');
const path = require('path');
const readline = require('readline');
const util = require('util');
const vm = require('vm');
const Module = require('module');
const ts = require('typescript');

const EVENT_FD = Number(process.env.ATOLL_EVENT_FD || 3);
delete process.env.ATOLL_EVENT_FD;
const MAX_CHUNK = 1 << 20; // characters of one output event or result text

let current = null; // the running request's id
let executionCount = 0;
let interruptPending = null; // rejects the awaited cell on SIGINT

function emit(event) {
  const buf = Buffer.from(JSON.stringify(event) + '\n');
  let off = 0;
  while (off < buf.length) off += fs.writeSync(EVENT_FD, buf, off);
}

function cut(text) {
  return text.length > MAX_CHUNK
    ? text.slice(0, MAX_CHUNK) + `\n[output truncated: ${text.length - MAX_CHUNK} characters dropped]\n`
    : text;
}

function captureWrites(stream, name) {
  stream.write = function write(chunk, encoding, callback) {
    if (typeof encoding === 'function') callback = encoding;
    const text = typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString('utf8');
    if (text) emit({ id: current, type: name, data: cut(text) });
    if (typeof callback === 'function') process.nextTick(callback);
    return true;
  };
}
captureWrites(process.stdout, 'stdout');
captureWrites(process.stderr, 'stderr');

// SIGINT from the service (client gone): vm's breakOnSigint stops synchronous code; an awaited
// cell is abandoned; between cells it is ignored.
process.on('SIGINT', () => {
  if (interruptPending) interruptPending(interruptError());
});

function interruptError() {
  const err = new Error('execution interrupted');
  err.name = 'KeyboardInterrupt';
  return err;
}

// ---- the persistent context -------------------------------------------------------------------
const sandbox = {};
const context = vm.createContext(sandbox);
const builtins = new Set(Object.getOwnPropertyNames(vm.runInContext('globalThis', context)));
for (const key of Object.getOwnPropertyNames(globalThis)) {
  if (builtins.has(key) || key === 'global') continue;
  try {
    Object.defineProperty(sandbox, key, Object.getOwnPropertyDescriptor(globalThis, key));
  } catch (_) {
    // a non-configurable clash: the context's own wins
  }
}
const cellFile = path.join(process.cwd(), '<cell>.js');
const cellModule = { exports: {}, id: cellFile, filename: cellFile };
Object.assign(sandbox, {
  console, // V8 gives each context a console of its own that prints nowhere
  global: vm.runInContext('globalThis', context),
  require: Module.createRequire(cellFile), // resolves from the context's cwd
  module: cellModule,
  exports: cellModule.exports,
  __filename: cellFile,
  __dirname: process.cwd(),
});

// ---- compiling a cell -------------------------------------------------------------------------
const FUNCTION_KINDS = new Set([
  ts.SyntaxKind.FunctionDeclaration, ts.SyntaxKind.FunctionExpression, ts.SyntaxKind.ArrowFunction,
  ts.SyntaxKind.MethodDeclaration, ts.SyntaxKind.GetAccessor, ts.SyntaxKind.SetAccessor,
  ts.SyntaxKind.Constructor, ts.SyntaxKind.ClassStaticBlockDeclaration,
]);

function hasTopLevelAwait(node) {
  if (FUNCTION_KINDS.has(node.kind)) return false;
  if (ts.isAwaitExpression(node) || (ts.isForOfStatement(node) && node.awaitModifier)) return true;
  return ts.forEachChild(node, hasTopLevelAwait) === true;
}

function bindingNames(name, into) {
  if (ts.isIdentifier(name)) into.push(name.text);
  else for (const el of name.elements) if (!ts.isOmittedExpression(el)) bindingNames(el.name, into);
}

function isUseStrict(stmt) {
  return ts.isExpressionStatement(stmt) && ts.isStringLiteral(stmt.expression) && stmt.expression.text === 'use strict';
}

// Runs after the CommonJS transform, so `import` lines (now `const x = require(...)`) are covered too.
function cellTransformer(info) {
  return (tctx) => (file) => {
    const f = tctx.factory;
    const stmts = [];
    for (const s of file.statements) {
      if (isUseStrict(s)) continue; // cells run sloppy, like a REPL: globals may be assigned
      if (ts.isVariableStatement(s)) {
        const list = f.createVariableDeclarationList(s.declarationList.declarations, ts.NodeFlags.None);
        for (const d of s.declarationList.declarations) bindingNames(d.name, info.names);
        stmts.push(f.updateVariableStatement(s, s.modifiers, list));
      } else if (ts.isClassDeclaration(s) && s.name) {
        const mods = (s.modifiers || []).filter((m) => m.kind !== ts.SyntaxKind.ExportKeyword && m.kind !== ts.SyntaxKind.DefaultKeyword);
        const expr = f.createClassExpression(mods, s.name, s.typeParameters, s.heritageClauses, s.members);
        const decl = f.createVariableDeclaration(s.name.text, undefined, undefined, expr);
        info.names.push(s.name.text);
        stmts.push(f.createVariableStatement(undefined, f.createVariableDeclarationList([decl], ts.NodeFlags.None)));
      } else {
        if (ts.isFunctionDeclaration(s) && s.name) info.names.push(s.name.text);
        stmts.push(s);
      }
    }
    info.async = stmts.some(hasTopLevelAwait);
    if (info.async && stmts.length && ts.isExpressionStatement(stmts[stmts.length - 1])) {
      stmts[stmts.length - 1] = f.createReturnStatement(stmts[stmts.length - 1].expression);
    }
    return f.updateSourceFile(file, stmts);
  };
}

function compile(source) {
  const info = { names: [], async: false };
  const out = ts.transpileModule(source, {
    fileName: 'cell.ts',
    reportDiagnostics: true,
    compilerOptions: {
      target: ts.ScriptTarget.ES2022,
      module: ts.ModuleKind.CommonJS,
      esModuleInterop: true,
      jsx: ts.JsxEmit.React,
    },
    transformers: { after: [cellTransformer(info)] },
  });
  const errors = (out.diagnostics || []).filter((d) => d.category === ts.DiagnosticCategory.Error);
  if (errors.length) {
    const lines = errors.map((d) => {
      const msg = ts.flattenDiagnosticMessageText(d.messageText, '\n');
      if (!d.file || d.start === undefined) return msg;
      const { line, character } = d.file.getLineAndCharacterOfPosition(d.start);
      return `cell.ts(${line + 1},${character + 1}): ${msg}`;
    });
    const err = new SyntaxError(lines.join('\n'));
    err.stack = `SyntaxError: ${lines.join('\n')}`;
    throw err;
  }
  if (!info.async) return { code: out.outputText, async: false };
  const keep = [...new Set(info.names)]
    .map((n) => `try { globalThis[${JSON.stringify(n)}] = ${n}; } catch (_) {}`)
    .join(' ');
  return { code: `(async () => { try {\n${out.outputText}\n} finally { ${keep} } })()`, async: true };
}

// ---- running a cell ---------------------------------------------------------------------------
function describeError(e, timeoutMs) {
  if (e && e.code === 'ERR_SCRIPT_EXECUTION_TIMEOUT') {
    const how = e.abandoned ? 'its pending work was abandoned, not stopped' : 'was interrupted';
    const value = `execution exceeded the timeout of ${timeoutMs} ms and ${how}`;
    return { name: 'TimeoutError', value, traceback: `TimeoutError: ${value}` };
  }
  if (e && e.code === 'ERR_SCRIPT_EXECUTION_INTERRUPTED') {
    const err = interruptError();
    return { name: err.name, value: err.message, traceback: `${err.name}: ${err.message}` };
  }
  if (e !== null && typeof e === 'object' && typeof e.message === 'string') {
    const name = typeof e.name === 'string' ? e.name : 'Error';
    const stack = typeof e.stack === 'string' ? e.stack : `${name}: ${e.message}`;
    // Frames of this runner and of node's vm say nothing about the user's code.
    const frames = stack.split('\n').filter((l) => !l.includes(__filename) && !l.includes('node:vm') && !l.includes('node:internal'));
    return { name, value: e.message, traceback: frames.join('\n') };
  }
  return { name: 'Error', value: util.inspect(e), traceback: `Uncaught ${util.inspect(e)}` };
}

function isPlainObject(v) {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) return false;
  const proto = Object.getPrototypeOf(v);
  return proto === null || Object.getPrototypeOf(proto) === null; // Object.prototype of any realm
}

function resultEvent(id, value) {
  const event = { id, type: 'result', text: cut(util.inspect(value, { depth: 6, maxArrayLength: 200 })) };
  if (isPlainObject(value)) {
    try {
      const text = JSON.stringify(value);
      if (text !== undefined && text.length <= MAX_CHUNK) event.json = JSON.parse(text);
    } catch (_) {
      // cycles, BigInt: text only
    }
  }
  return event;
}

function withDeadline(promise, timeoutMs) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      const err = new Error('timeout');
      err.code = 'ERR_SCRIPT_EXECUTION_TIMEOUT';
      err.abandoned = true;
      reject(err);
    }, timeoutMs);
    interruptPending = reject;
    promise.then(resolve, reject).finally(() => clearTimeout(timer));
  });
}

async function run(req) {
  const timeoutMs = Math.max(1, Number(req.timeout_ms) || 30000);
  const saved = {};
  for (const [k, v] of Object.entries(req.env || {})) {
    saved[k] = process.env[k];
    process.env[k] = String(v);
  }
  current = req.id;
  executionCount += 1;
  try {
    const cell = compile(String(req.code));
    const script = new vm.Script(cell.code, { filename: 'cell.js' });
    let value = script.runInContext(context, { timeout: timeoutMs, breakOnSigint: true, displayErrors: false });
    if (cell.async) value = await withDeadline(Promise.resolve(value), timeoutMs);
    if (value !== undefined) emit(resultEvent(req.id, value));
  } catch (e) {
    emit({ id: req.id, type: 'error', ...describeError(e, timeoutMs) });
  } finally {
    interruptPending = null;
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
    emit({ id: req.id, type: 'done', execution_count: executionCount });
    current = null;
  }
}

// ---- request loop -----------------------------------------------------------------------------
const queue = [];
let busy = false;
async function drain() {
  if (busy) return;
  busy = true;
  while (queue.length) await run(queue.shift());
  busy = false;
}

process.on('unhandledRejection', (reason) => {
  const { traceback } = describeError(reason, 0);
  emit({ id: current, type: 'stderr', data: `Unhandled promise rejection: ${traceback}\n` });
});
process.on('uncaughtException', (err) => {
  const { traceback } = describeError(err, 0);
  emit({ id: current, type: 'stderr', data: `Uncaught exception: ${traceback}\n` });
});

const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
rl.on('line', (line) => {
  if (!line.trim()) return;
  let req;
  try {
    req = JSON.parse(line);
  } catch (e) {
    return;
  }
  queue.push(req);
  drain();
});
rl.on('close', () => process.exit(0));
emit({ type: 'ready', node: process.version, typescript: ts.version });
