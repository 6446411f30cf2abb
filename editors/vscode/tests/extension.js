// extension.js against stand-ins for the `vscode` API and the language client (no VS Code
// needed): the server command comes from the settings, both languages are served, a settings
// change restarts the server, and a server that cannot start gives a message, not a crash.
"use strict";
const assert = require("assert");
const Module = require("module");

const settings = { executable: "/venv/bin/scenecraft", args: ["lsp", "--verbose"] };
const log = { clients: [], errors: [], commands: {}, onConfig: null };

class FakeClient {
  constructor(id, name, server, client) {
    Object.assign(this, { id, name, server, client, running: false });
    log.clients.push(this);
  }
  async start() {
    if (this.server.command === "missing") throw new Error("spawn missing ENOENT");
    this.running = true;
  }
  async stop() {
    this.running = false;
  }
}

const fakeVscode = {
  workspace: {
    getConfiguration: (section) => {
      assert.strictEqual(section, "scenecraft");
      return { get: (key) => settings[key] };
    },
    createFileSystemWatcher: (glob) => ({ glob }),
    onDidChangeConfiguration: (fn) => {
      log.onConfig = fn;
      return { dispose() {} };
    },
  },
  window: { showErrorMessage: (text) => log.errors.push(text) },
  commands: {
    registerCommand: (name, fn) => {
      log.commands[name] = fn;
      return { dispose() {} };
    },
  },
};
const fakeClientModule = { LanguageClient: FakeClient, TransportKind: { stdio: 0 } };

const resolve = Module._load;
Module._load = function (request, ...rest) {
  if (request === "vscode") return fakeVscode;
  if (request === "vscode-languageclient/node") return fakeClientModule;
  return resolve.call(this, request, ...rest);
};

async function main() {
  const extension = require("../extension.js");
  const context = { subscriptions: [] };
  await extension.activate(context);
  let [client] = log.clients;
  assert.deepStrictEqual(client.server, {
    command: "/venv/bin/scenecraft",
    args: ["lsp", "--verbose"],
    transport: 0,
  });
  assert.deepStrictEqual(
    client.client.documentSelector.map((s) => s.language).sort(),
    ["scene", "scene", "scene-jinja"]
  );
  assert.ok(client.running);
  // an unrelated setting changes nothing; scenecraft.executable restarts the server
  log.onConfig({ affectsConfiguration: (key) => key === "editor.fontSize" });
  assert.strictEqual(log.clients.length, 1);
  settings.executable = "missing";
  log.onConfig({ affectsConfiguration: (key) => key === "scenecraft.executable" });
  await new Promise((r) => setTimeout(r, 10));
  assert.strictEqual(log.clients.length, 2);
  assert.ok(!client.running, "the old server was stopped");
  assert.strictEqual(log.errors.length, 1);
  assert.match(log.errors[0], /cannot start the language server \(`missing lsp --verbose`\)/);
  // the restart command starts it again
  settings.executable = "scenecraft";
  await log.commands["scenecraft.restartServer"]();
  client = log.clients[2];
  assert.ok(client.running && client.server.command === "scenecraft");
  await extension.deactivate();
  assert.ok(!client.running);
  console.log("✓ extension.js: server command from the settings, restart, start failure");
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
