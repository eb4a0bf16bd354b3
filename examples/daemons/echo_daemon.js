#!/usr/bin/env node
// Reference plugin daemon for tend, in Node.js: a JSON-RPC 2.0 echo service.
//
// The same contract as echo_daemon.py (see its docstring):
// - serve the Unix stream socket named by SOCKET_PATH (exit 2 without it);
// - remove a stale socket file left by a crashed instance, but refuse to
//   start when something still accepts connections there (exit 1);
// - one JSON-RPC 2.0 request (or batch) per line, one response line per
//   request that has an id; -32700 parse error, -32600 invalid request,
//   -32601 method not found; `ping` answers "pong", `echo` its params;
// - on SIGTERM or SIGINT stop accepting, close connections, remove the
//   socket file and exit 0;
// - log to stderr, one line per event.
//
// Uses only Node's standard library. Try it by hand:
//   SOCKET_PATH=/tmp/x.sock node echo_daemon.js &
//   printf '{"jsonrpc":"2.0","id":1,"method":"ping"}\n' | socat - UNIX-CONNECT:/tmp/x.sock

"use strict";

const fs = require("fs");
const net = require("net");

const PROG = "echo_daemon.js";
// A request line longer than this gets a parse error and the connection is closed.
const MAX_LINE = 16 * 1024 * 1024;

const PARSE_ERROR = -32700;
const INVALID_REQUEST = -32600;
const METHOD_NOT_FOUND = -32601;

function log(message) {
  process.stderr.write(`${PROG}[${process.pid}]: ${message}\n`);
}

function errorResponse(id, code, message) {
  return { jsonrpc: "2.0", id, error: { code, message } };
}

function validId(value) {
  return value === null || typeof value === "string" || typeof value === "number";
}

// The response object for one request, or null for a notification.
function handleRequest(request) {
  if (typeof request !== "object" || request === null || Array.isArray(request)) {
    return errorResponse(null, INVALID_REQUEST, "Invalid Request");
  }
  const hasId = Object.prototype.hasOwnProperty.call(request, "id");
  const id = hasId ? request.id : null;
  if (!validId(id)) {
    return errorResponse(null, INVALID_REQUEST, "Invalid Request");
  }
  const params = request.params;
  const paramsOk = params === undefined || (typeof params === "object" && params !== null);
  if (request.jsonrpc !== "2.0" || typeof request.method !== "string" || !paramsOk) {
    return errorResponse(id, INVALID_REQUEST, "Invalid Request");
  }
  let result;
  if (request.method === "ping") {
    result = "pong";
  } else if (request.method === "echo") {
    result = params === undefined ? null : params;
  } else {
    return hasId ? errorResponse(id, METHOD_NOT_FOUND, `Method not found: ${request.method}`) : null;
  }
  return hasId ? { jsonrpc: "2.0", id, result } : null;
}

// The reply line (with newline) for one request line, or "".
function handleLine(line) {
  const text = line.trim();
  if (text === "") {
    return "";
  }
  let message;
  try {
    message = JSON.parse(text);
  } catch {
    return JSON.stringify(errorResponse(null, PARSE_ERROR, "Parse error")) + "\n";
  }
  let reply;
  if (Array.isArray(message)) {
    if (message.length === 0) {
      reply = errorResponse(null, INVALID_REQUEST, "Invalid Request");
    } else {
      const replies = message.map(handleRequest).filter((r) => r !== null);
      reply = replies.length > 0 ? replies : null;
    }
  } else {
    reply = handleRequest(message);
  }
  return reply === null ? "" : JSON.stringify(reply) + "\n";
}

function serve(connection) {
  let pending = "";
  connection.setEncoding("utf8");
  connection.on("data", (chunk) => {
    pending += chunk;
    let newline;
    let out = "";
    while ((newline = pending.indexOf("\n")) >= 0) {
      out += handleLine(pending.slice(0, newline));
      pending = pending.slice(newline + 1);
    }
    if (pending.length > MAX_LINE) {
      out += handleLine("\u0000");
      pending = "";
      connection.end(out);
      return;
    }
    if (out !== "") {
      connection.write(out);
    }
  });
  connection.on("end", () => {
    connection.end(pending === "" ? "" : handleLine(pending));
  });
  connection.on("error", () => connection.destroy());
}

// Removes a socket file left by a crashed instance; exits when the path is
// not a socket or another daemon still serves it.
function removeStaleSocket(path, then) {
  let stat;
  try {
    stat = fs.lstatSync(path);
  } catch {
    return then();
  }
  if (!stat.isSocket()) {
    log(`${path} exists and is not a socket; refusing to remove it`);
    process.exit(1);
  }
  const probe = net.connect(path);
  probe.on("connect", () => {
    log(`another daemon is serving ${path}; refusing to start`);
    process.exit(1);
  });
  probe.on("error", () => {
    log(`removing stale socket ${path}`);
    fs.unlinkSync(path);
    then();
  });
}

function main() {
  const path = process.env.SOCKET_PATH;
  if (!path) {
    process.stderr.write(
      `${PROG}: SOCKET_PATH is not set; this daemon must be started by tend ` +
        "(or with SOCKET_PATH=/path/to/socket in the environment)\n",
    );
    process.exit(2);
  }
  const connections = new Set();
  const server = net.createServer((connection) => {
    connections.add(connection);
    connection.on("close", () => connections.delete(connection));
    serve(connection);
  });
  let socketId = null;
  const stop = (signal) => {
    log(`stopping on ${signal}`);
    server.close();
    for (const connection of connections) {
      connection.destroy();
    }
    try {
      const stat = fs.lstatSync(path);
      if (socketId && stat.dev === socketId.dev && stat.ino === socketId.ino) {
        fs.unlinkSync(path);
      }
    } catch {
      // Already gone.
    }
    log("socket removed, exiting");
    process.exit(0);
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
  server.on("error", (error) => {
    log(`fatal: ${error.message}`);
    process.exit(1);
  });
  removeStaleSocket(path, () => {
    server.listen(path, () => {
      const stat = fs.lstatSync(path);
      socketId = { dev: stat.dev, ino: stat.ino };
      log(`listening on ${path}`);
    });
  });
}

main();
