// Borough's browser client for shared maps: a plain ES module, no build step.
//
//   import { openMap } from "/maps/client.js";
//   const map = openMap("board");
//   map.on("ready", (map) => render(map.entries()));
//   map.on("set", (value, key, map) => ...);
//   map.on("delete", (oldValue, key, map) => ...);
//   map.ready(() => ...);            // at once when already synchronised
//   await map.set("title", { text: "hello" });
//   await map.delete("title");
//   map.get("title"); map.has("title"); map.keys(); map.entries(); map.revision;
//
// The map keeps the whole map and its revision. It follows the node's change feed over a
// WebSocket; when the connection drops it reconnects by itself, to the next node of the
// cluster when one goes away (it learns the members from GET /cluster), and resumes from its
// revision, so no change is lost or seen twice. If the changes it missed were compacted, the
// node sends the whole map again, and the client reports the differences as set and delete
// events.

// Writes in flight on one connection at most (the node refuses more); the rest wait their turn.
const WRITES_IN_FLIGHT_MAX = 64;
const RECONNECT_DELAY_MS_MIN = 100;
const RECONNECT_DELAY_MS_MAX = 5000;

function httpBase(origin) {
  return origin.replace(/\/+$/, "");
}

function feedUrl(base, name, revision) {
  const url = new URL(`${base}/maps/${encodeURIComponent(name)}/ws`);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  if (revision !== null) url.searchParams.set("from_revision", String(revision));
  return url.toString();
}

function sameJson(left, right) {
  return JSON.stringify(left) === JSON.stringify(right);
}

export class SharedMap {
  constructor(name, options = {}) {
    this.name = name;
    this.revision = null;
    this.node = null;
    this.connected = false;
    // True once the feed is live: after its ready (or resume) on the current connection.
    this.live = false;
    this._entries = new Map();
    this._synchronised = false;
    this._listeners = { ready: [], set: [], delete: [], status: [] };
    this._readyCallbacks = [];
    this._nodes = (options.nodes && options.nodes.length ? options.nodes : [globalThis.location ? globalThis.location.origin : "http://127.0.0.1:7480"]).map(httpBase);
    this._nodeIndex = 0;
    this._learnMembers = options.learnMembers !== false;
    this._socket = null;
    this._closed = false;
    this._delayMs = RECONNECT_DELAY_MS_MIN;
    this._nextId = 1;
    this._pending = new Map(); // id -> {resolve, reject} of writes sent
    this._queued = []; // writes not sent yet: {message, resolve, reject}
    this._connect();
  }

  // ---- the original API ----

  on(event, listener) {
    if (!this._listeners[event]) throw new Error(`no event ${event}`);
    this._listeners[event].push(listener);
    return this;
  }

  off(event, listener) {
    const listeners = this._listeners[event] || [];
    const index = listeners.indexOf(listener);
    if (index >= 0) listeners.splice(index, 1);
    return this;
  }

  ready(callback) {
    if (this._synchronised) callback(this);
    else this._readyCallbacks.push(callback);
    return this;
  }

  get(key) {
    return this._entries.get(key);
  }

  has(key) {
    return this._entries.has(key);
  }

  keys() {
    return [...this._entries.keys()].sort();
  }

  entries() {
    return this.keys().map((key) => [key, this._entries.get(key)]);
  }

  get size() {
    return this._entries.size;
  }

  // Resolves with the change's revision once committed; the change itself arrives as a set
  // event like anyone else's.
  set(key, value) {
    return this._write({ type: "set", key, value });
  }

  delete(key) {
    return this._write({ type: "delete", key });
  }

  close() {
    this._closed = true;
    if (this._socket) this._socket.close(1000, "closed by the page");
    this._failPending("the map was closed");
  }

  // ---- the feed ----

  _emit(event, ...args) {
    for (const listener of [...this._listeners[event]]) {
      try {
        listener(...args);
      } catch (error) {
        console.error(`borough map ${this.name}: a ${event} listener threw`, error);
      }
    }
  }

  _status(state, detail) {
    this._emit("status", { state, node: this.node, revision: this.revision, detail });
  }

  _write(message) {
    return new Promise((resolve, reject) => {
      const id = this._nextId++;
      this._queued.push({ message: { ...message, id }, resolve, reject });
      this._pump();
    });
  }

  // Sends queued writes while the connection has room for them.
  _pump() {
    while (this._socket && this.connected && this._queued.length && this._pending.size < WRITES_IN_FLIGHT_MAX) {
      const entry = this._queued.shift();
      this._pending.set(entry.message.id, entry);
      this._socket.send(JSON.stringify(entry.message));
    }
  }

  _failPending(reason) {
    for (const entry of this._pending.values()) {
      entry.reject(new Error(`${reason}; the write's outcome is unknown`));
    }
    this._pending.clear();
    if (this._closed) {
      for (const entry of this._queued) entry.reject(new Error(reason));
      this._queued = [];
    }
  }

  async _refreshMembers(base) {
    if (!this._learnMembers) return;
    try {
      const response = await fetch(`${base}/cluster`);
      if (!response.ok) return;
      const cluster = await response.json();
      for (const member of cluster.members || []) {
        if (member.state !== "active" || !member.http_address) continue;
        const address = httpBase(`${new URL(base).protocol}//${member.http_address}`);
        if (!this._nodes.includes(address)) this._nodes.push(address);
      }
    } catch (_) {
      // The node went away meanwhile: the next reconnect tries another.
    }
  }

  _connect() {
    if (this._closed) return;
    const base = this._nodes[this._nodeIndex % this._nodes.length];
    this.node = base;
    this._status("connecting");
    let socket;
    try {
      socket = new WebSocket(feedUrl(base, this.name, this.revision));
    } catch (error) {
      this._reconnect(String(error));
      return;
    }
    this._socket = socket;
    socket.onopen = () => {
      this.connected = true;
      this._delayMs = RECONNECT_DELAY_MS_MIN;
      this._refreshMembers(base);
      this._pump();
    };
    socket.onmessage = (event) => this._receive(JSON.parse(event.data));
    socket.onclose = (event) => {
      if (this._socket !== socket) return;
      this._socket = null;
      this.connected = false;
      this.live = false;
      this._failPending("the connection closed");
      this._reconnect(event.reason || `closed (${event.code})`);
    };
    socket.onerror = () => {};
  }

  _reconnect(reason) {
    if (this._closed) return;
    this._status("disconnected", reason);
    // The next node each time: a node that went away is left at once.
    this._nodeIndex = (this._nodeIndex + 1) % this._nodes.length;
    const delay = this._delayMs;
    this._delayMs = Math.min(this._delayMs * 2, RECONNECT_DELAY_MS_MAX);
    setTimeout(() => this._connect(), delay);
  }

  _receive(message) {
    switch (message.type) {
      case "ready":
        this._takeReady(message);
        break;
      case "resumed":
        this.live = true;
        this._status("live");
        break;
      case "set": {
        if (this.revision !== null && message.revision <= this.revision) break;
        this._entries.set(message.key, message.value);
        this.revision = message.revision;
        this._emit("set", message.value, message.key, this);
        break;
      }
      case "delete": {
        if (this.revision !== null && message.revision <= this.revision) break;
        this._entries.delete(message.key);
        this.revision = message.revision;
        this._emit("delete", message.old_value, message.key, this);
        break;
      }
      case "resync":
        // Cut off for falling behind: the socket closes, and the reconnect resumes.
        this._status("resync", message.reason);
        break;
      case "ack": {
        const entry = this._pending.get(message.id);
        if (entry) {
          this._pending.delete(message.id);
          entry.resolve(message.revision);
        }
        this._pump();
        break;
      }
      case "error": {
        const entry = this._pending.get(message.id);
        if (entry) {
          this._pending.delete(message.id);
          entry.reject(new Error(message.error));
        } else {
          console.error(`borough map ${this.name}:`, message.error);
        }
        this._pump();
        break;
      }
      default:
        break;
    }
  }

  _takeReady(message) {
    const incoming = new Map(Object.entries(message.entries));
    const wasSynchronised = this._synchronised;
    const previous = this._entries;
    this._entries = incoming;
    this.revision = message.revision;
    this._synchronised = true;
    this.live = true;
    this._status("live");
    if (!wasSynchronised) {
      this._emit("ready", this);
      const callbacks = this._readyCallbacks;
      this._readyCallbacks = [];
      for (const callback of callbacks) {
        try {
          callback(this);
        } catch (error) {
          console.error(`borough map ${this.name}: a ready callback threw`, error);
        }
      }
      return;
    }
    // A fresh copy after a gap that could not be replayed: report what differs.
    for (const [key, oldValue] of previous) {
      if (!incoming.has(key)) this._emit("delete", oldValue, key, this);
    }
    for (const [key, value] of incoming) {
      if (!previous.has(key) || !sameJson(previous.get(key), value)) this._emit("set", value, key, this);
    }
  }
}

// Opens map `name`. Options: `nodes`, the base URLs of nodes to use (default: the page's
// own origin; the cluster's other members are learned from it); `learnMembers: false` to
// keep to the given nodes.
export function openMap(name, options = {}) {
  return new SharedMap(name, options);
}

export default openMap;
