'use strict';
// `npm start`: builds the outpost binary if it is missing, starts the whole stack (lib/stack.js)
// with two demo users, and prints where to open the app. Ctrl-C stops everything.

const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const { startStack } = require('./lib/stack');

const REPO_ROOT = path.resolve(__dirname, '..', '..');

async function main() {
  if (!process.env.OUTPOST_BIN && !fs.existsSync(path.join(REPO_ROOT, 'target', 'debug', 'outpost'))) {
    console.log('building outpost (cargo build -p outpost-cli)...');
    const built = spawnSync('cargo', ['build', '-p', 'outpost-cli'], { cwd: REPO_ROOT, stdio: 'inherit' });
    if (built.status !== 0) process.exit(built.status || 1);
  }
  const users = [
    { name: 'alice', password: 'fieldnotes' },
    { name: 'bob', password: 'fieldnotes' },
  ];
  const stack = await startStack({ users, webPort: Number(process.env.PORT || 8090) });
  console.log(`Field notes is running at ${stack.url}`);
  console.log('Sign in as alice or bob, password "fieldnotes".');
  console.log(`Outpost: ${stack.couchUrl} (admin / ${stack.admin.password}); gateway: ${stack.gatewayUrl}`);
  const stop = async () => {
    await stack.stop();
    process.exit(0);
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
}

main().catch((err) => {
  console.error(err.message || err);
  process.exit(1);
});
