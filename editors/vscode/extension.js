// The scenecraft extension: grammars come from package.json; this starts the language server
// (`scenecraft lsp`, over stdio) for .scene and .scene.j2 files and restarts it when the
// `scenecraft.executable` or `scenecraft.args` setting changes.
"use strict";
const vscode = require("vscode");
const { LanguageClient, TransportKind } = require("vscode-languageclient/node");

let client = null;

function serverOptions() {
  const config = vscode.workspace.getConfiguration("scenecraft");
  const command = config.get("executable") || "scenecraft";
  const args = config.get("args") || ["lsp"];
  return { command, args, transport: TransportKind.stdio };
}

async function start() {
  const options = serverOptions();
  client = new LanguageClient(
    "scenecraft",
    "scenecraft",
    options,
    {
      documentSelector: [
        { scheme: "file", language: "scene" },
        { scheme: "file", language: "scene-jinja" },
        { scheme: "untitled", language: "scene" },
      ],
      synchronize: {
        // included concept libraries and --vars files change the diagnostics of their users
        fileEvents: vscode.workspace.createFileSystemWatcher("**/*.{scene,j2,toml,json}"),
      },
    }
  );
  try {
    await client.start();
  } catch (err) {
    const what = `${options.command} ${options.args.join(" ")}`;
    vscode.window.showErrorMessage(
      `scenecraft: cannot start the language server (\`${what}\`): ${err.message || err}. ` +
        'Install it with `pip install "scenecraft[lsp]"` or set `scenecraft.executable`.'
    );
  }
}

async function stop() {
  if (client) {
    const old = client;
    client = null;
    try {
      await old.stop();
    } catch (_) {
      // never started: nothing to stop
    }
  }
}

async function restart() {
  await stop();
  await start();
}

function activate(context) {
  context.subscriptions.push(
    { dispose: () => stop() },
    vscode.commands.registerCommand("scenecraft.restartServer", () => restart()),
    vscode.workspace.onDidChangeConfiguration((event) => {
      if (
        event.affectsConfiguration("scenecraft.executable") ||
        event.affectsConfiguration("scenecraft.args")
      ) {
        restart();
      }
    })
  );
  return start();
}

function deactivate() {
  return stop();
}

module.exports = { activate, deactivate };
