// A proxyless gRPC xDS client in Node (@grpc/grpc-js + @grpc/grpc-js-xds):
// calls TARGET N times, prints one backend name per line, then "--".
//
// Usage: GRPC_XDS_BOOTSTRAP=bootstrap.json node xds_client.js xds:///echo.default:PORT N
// Reads further counts on stdin (one number per line) and answers each with
// that many calls, so one channel (one xDS subscription) serves a whole test.
// The same protocol as xds_client.py.
'use strict';

const readline = require('readline');
const grpc = require('@grpc/grpc-js');
require('@grpc/grpc-js-xds').register();

const METHOD = '/test.Echo/Hello';
const identity = (b) => b;

function main() {
  const [target, first] = process.argv.slice(2);
  if (!target || first === undefined) {
    process.stderr.write('usage: xds_client.js TARGET N\n');
    process.exit(2);
  }
  const client = new grpc.Client(target, grpc.credentials.createInsecure());

  function call() {
    return new Promise((resolve) => {
      client.makeUnaryRequest(
        METHOD, identity, identity, Buffer.alloc(0),
        { deadline: Date.now() + 5000, waitForReady: true },
        (err, res) => {
          if (err) {
            const code = grpc.status[err.code] !== undefined ? grpc.status[err.code] : err.code;
            resolve(`ERROR ${code} ${err.details}`);
          } else {
            resolve(res.toString());
          }
        });
    });
  }

  async function burst(k) {
    for (let i = 0; i < k; i++) {
      process.stdout.write((await call()) + '\n');
    }
    process.stdout.write('--\n');
  }

  // Bursts run strictly one after another, in the order the counts arrive.
  let queue = burst(parseInt(first, 10));
  const rl = readline.createInterface({ input: process.stdin, terminal: false });
  rl.on('line', (line) => {
    line = line.trim();
    if (line) {
      const k = parseInt(line, 10);
      queue = queue.then(() => burst(k));
    }
  });
  rl.on('close', () => {
    queue.then(() => {
      client.close();
      process.exit(0);
    });
  });
}

main();
