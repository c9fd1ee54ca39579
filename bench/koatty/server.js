#!/usr/bin/env node
// koatty_serve benchmark peer for poolserve's load scripts.
//
//   node server.js http  <port>   HTTP/1.1 cleartext
//   node server.js http2 <port>   HTTP/2 over TLS (HTTP/1.1 over TLS also accepted);
//                                 PEM paths from $KOATTY_CERT and $KOATTY_KEY
//
// GET / -> 200 text/plain "hello"; anything else -> 404.
// Listens on 127.0.0.1 only; prints "listening <port>" on stdout once ready
// (port 0 picks a free port and prints it). SIGTERM/SIGINT exit 0.
//
// The sockets are owned by koatty_serve: NewServe() builds its HttpServer /
// Http2Server, and Start() listens, exactly as koatty's own bootstrap does
// (koatty 3.11.8 Loader.LoadAllComponents + Koatty.listen). The app object is
// a bare koatty_core Koatty (Koa subclass) without the decorator/IOC bootstrap.
'use strict';

// koatty_core's Koatty constructor evaluates
// (KOATTY_ENV || NODE_ENV).includes(...) and throws if both are unset.
if (!process.env.KOATTY_ENV && !process.env.NODE_ENV) {
  process.env.KOATTY_ENV = 'production';
}

const path = require('path');

// koatty_logger / koatty_trace / koatty_exception are dependencies of
// koatty_core, not of this package; resolve them from koatty_core's location
// so we get the very instances koatty_core uses (shared logger, shared IOC
// container holding the ExceptionHandler registration).
const requireFrom = (dir, name) => require(require.resolve(name, { paths: [dir] }));
const coreDir = path.dirname(require.resolve('koatty_core'));
const traceDir = path.dirname(require.resolve('koatty_trace', { paths: [coreDir] }));
const { DefaultLogger } = requireFrom(coreDir, 'koatty_logger');
const { Exception, ExceptionHandler } = requireFrom(traceDir, 'koatty_exception');

// koatty_core's trace middleware logs every request (Info for 2xx, Error for
// >= 400) and koatty_core/koatty_serve log lifecycle messages, all to stdout
// through this shared winston logger. Silence it so stdout only carries our
// "listening <port>" line and the benchmark does not measure logging.
// KOATTY_LOG=1 turns it back on for debugging.
if (process.env.KOATTY_LOG !== '1') {
  DefaultLogger.enable(false);
}

const fs = require('fs');
const { Koatty } = require('koatty_core');
const { NewServe } = require('koatty_serve');

function die(msg) {
  process.stderr.write(`koatty bench server: ${msg}\n`);
  process.exit(1);
}

const USAGE = 'usage: node server.js <http|http2> <port>  (http2 needs KOATTY_CERT and KOATTY_KEY)';
const [protocol, portArg] = process.argv.slice(2);
if (protocol !== 'http' && protocol !== 'http2') die(USAGE);
if (portArg === undefined || !/^\d+$/.test(portArg) || Number(portArg) > 65535) die(USAGE);
const port = Number(portArg);

const app = new Koatty({
  appDebug: false,
  appPath: __dirname,
  rootPath: __dirname,
  koattyPath: __dirname,
  name: 'poolserve-bench-koatty',
  version: '0.0.0',
});

// Koatty.captureError() replaced the process handlers with logger-backed ones;
// with the logger disabled they would swallow everything, so send them to
// stderr. Uncaught exceptions are fatal (Node's default); unhandled rejections
// are reported and survived (Koatty's behaviour). Koatty also routes process
// 'warning' events to an unbound DefaultLogger.Warn, which itself throws
// "this.printLog is not a function".
const report = (what, e) => process.stderr.write(`koatty bench server: ${what}: ${e && e.stack || e}\n`);
process.removeAllListeners('uncaughtException');
process.on('uncaughtException', (err) => { report('uncaught exception', err); process.exit(1); });
process.removeAllListeners('unhandledRejection');
process.on('unhandledRejection', (err) => report('unhandled rejection', err));
process.removeAllListeners('warning');
process.on('warning', (w) => report('warning', w));

// app.config() reads the "_configs" metadata (normally filled by koatty's
// config loader). NewServe reads key_file/crt_file from it for http2.
const config = {};
if (protocol === 'http2') {
  const cert = process.env.KOATTY_CERT;
  const key = process.env.KOATTY_KEY;
  if (!cert || !key) die('http2 needs KOATTY_CERT and KOATTY_KEY (PEM file paths)');
  for (const f of [cert, key]) {
    try { fs.accessSync(f, fs.constants.R_OK); } catch (e) { die(`cannot read ${f}: ${e.message}`); }
  }
  config.crt_file = cert;
  config.key_file = key;
}
app.setMetaData('_configs', { config });

// Status handling: koatty_core's response middleware (koatty_trace) turns any
// status >= 400 into an Exception and, without a registered global
// ExceptionHandler, answers it as 500 with a JSON body. Register the minimal
// handler a Koatty app would declare with @ExceptionHandler() so unknown paths
// get a real 404 (other errors keep the default JSON handling).
class BenchExceptionHandler extends Exception {
  async handler(ctx) {
    if (this.status !== 404) return super.handler(ctx);
    const body = 'not found';
    ctx.status = 404;
    ctx.type = 'text/plain';
    ctx.length = Buffer.byteLength(body);
    return ctx.res.end(ctx.method === 'HEAD' ? undefined : body);
  }
}
ExceptionHandler()(BenchExceptionHandler);

app.use(async (ctx) => {
  if (ctx.path === '/' && (ctx.method === 'GET' || ctx.method === 'HEAD')) {
    ctx.status = 200;
    ctx.type = 'text/plain';
    ctx.body = 'hello';
  }
  // otherwise leave status at 404; koatty_core's response handler answers it
});

// Same as koatty's bootstrap: Helper.define(app, "server", NewServe(app, opts)).
Object.defineProperty(app, 'server', {
  value: NewServe(app, { hostname: '127.0.0.1', port, protocol }),
  writable: false,
  enumerable: false,
  configurable: false,
});

const nativeServer = app.listen(() => {
  const addr = app.server.server.address();
  process.stdout.write(`listening ${addr.port}\n`);
});
nativeServer.on('error', (err) => die(`listen ${protocol} 127.0.0.1:${port}: ${err.message}`));

// koatty_serve's CreateTerminus also hooks SIGINT/SIGTERM; depending on
// NODE_ENV it either exits 0 at once or waits up to 60 s for connections to
// drain (then exits 1). Ours runs in the same emit, before its async part,
// and always exits 0 promptly.
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    try { nativeServer.close(); } catch (_) { /* ignore */ }
    process.exit(0);
  });
}
