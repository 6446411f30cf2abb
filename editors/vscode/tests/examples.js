// Tokenize every example scene file of the repository with the extension's grammars (through
// vscode-tmgrammar-test's registry, the same engine VS Code runs) and fail on any character that
// no rule matched (only the root scope) or that the grammar marks `invalid.illegal`.
//
//   node tests/examples.js            # scenes/**/*.scene, examples/**/*.scene(.j2)
"use strict";
const fs = require("fs");
const path = require("path");
const { createRegistry, loadConfiguration } = require("vscode-tmgrammar-test/dist/common");

const ROOT = path.resolve(__dirname, "..", "..", "..");
const FOLDERS = ["scenes", "examples"];

function exampleFiles() {
  const found = [];
  const walk = (dir) => {
    for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
      const full = path.join(dir, entry.name);
      if (entry.isDirectory()) walk(full);
      else if (/\.scene(\.j2)?$/.test(entry.name)) found.push(full);
    }
  };
  FOLDERS.forEach((f) => walk(path.join(ROOT, f)));
  return found.sort();
}

function problems(grammar, text, root) {
  const out = [];
  let stack = null; // vscode-textmate's INITIAL
  text.split(/\r?\n/).forEach((line, n) => {
    const result = grammar.tokenizeLine(line, stack);
    for (const token of result.tokens) {
      const piece = line.slice(token.startIndex, token.endIndex);
      const bare = token.scopes.length === 1 && token.scopes[0] === root;
      const illegal = token.scopes.some((s) => s.startsWith("invalid."));
      if ((bare && piece.trim() !== "") || illegal) {
        const why = illegal ? token.scopes[token.scopes.length - 1] : "no scope";
        out.push(`${n + 1}:${token.startIndex + 1}: ${JSON.stringify(piece)} (${why})`);
      }
    }
    stack = result.ruleStack;
  });
  return out;
}

async function main() {
  const config = loadConfiguration(path.join(__dirname, "..", "package.json"));
  const registry = createRegistry(config.grammars);
  const files = exampleFiles();
  if (files.length === 0) throw new Error(`no example files under ${ROOT}`);
  let failed = 0;
  for (const file of files) {
    const scope = file.endsWith(".j2") ? "source.scene.jinja" : "source.scene";
    const grammar = await registry.loadGrammar(scope);
    const found = problems(grammar, fs.readFileSync(file, "utf8"), scope);
    const rel = path.relative(ROOT, file);
    if (found.length) {
      failed += 1;
      console.log(`✖ ${rel}\n  ${found.slice(0, 20).join("\n  ")}`);
    } else {
      console.log(`✓ ${rel}`);
    }
  }
  console.log(`${files.length - failed} of ${files.length} example files tokenized cleanly`);
  process.exitCode = failed ? 1 : 0;
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
