// A browser client of Outpost's multiplexed feed (docs/feed.md): one WebSocket for the changes of
// many databases. It remembers the last sequence it saw of each database and, when the connection
// drops (a server restart, a network change), reconnects and subscribes again from there, so no
// change is lost and none is delivered twice.
//
//   const feed = new OutpostFeed('ws://host:5984/_outpost/v1/feed', {
//     onChange: (db, change) => ..., onStatus: (status, detail) => ...,
//   });
//   feed.subscribe('notes', { include_docs: true });
//
// Plain script (no modules, no dependencies), so a page can load it with a <script> tag.
(function (global) {
  'use strict';

  // Sequences are opaque strings `N-<suffix>` (or numbers, from older servers) whose numeric
  // prefix grows within one database; only that prefix is compared, the whole value is sent back.
  function seqNumber(seq) {
    return typeof seq === 'number' ? seq : parseInt(String(seq), 10);
  }

  class OutpostFeed {
    constructor(url, { onChange = () => {}, onStatus = () => {}, maxBackoffMs = 2000 } = {}) {
      this.url = url;
      this.onChange = onChange;
      this.onStatus = onStatus;
      this.maxBackoffMs = maxBackoffMs;
      /** db name -> { options, since } */
      this.subscriptions = new Map();
      this.socket = null;
      this.closed = false;
      this.backoffMs = 100;
      this.connections = 0;
      this.connect();
    }

    /** Follows `db` from `options.since` (default 0) with `_changes`' options. */
    subscribe(db, options = {}) {
      const { since = 0, ...rest } = options;
      this.subscriptions.set(db, { options: rest, since });
      this.send({ type: 'subscribe', db, since, ...rest });
    }

    unsubscribe(db) {
      this.subscriptions.delete(db);
      this.send({ type: 'unsubscribe', db });
    }

    /** The last sequence seen of each database: where a new connection resumes. */
    positions() {
      const out = {};
      for (const [db, sub] of this.subscriptions) out[db] = sub.since;
      return out;
    }

    close() {
      this.closed = true;
      if (this.socket) this.socket.close();
    }

    send(command) {
      if (this.socket && this.socket.readyState === WebSocket.OPEN) {
        this.socket.send(JSON.stringify(command));
      }
    }

    connect() {
      if (this.closed) return;
      const socket = new WebSocket(this.url);
      this.socket = socket;
      socket.onopen = () => {
        this.connections += 1;
        this.backoffMs = 100;
        this.onStatus('open', { connections: this.connections });
        for (const [db, sub] of this.subscriptions) {
          socket.send(JSON.stringify({ type: 'subscribe', db, since: sub.since, ...sub.options }));
        }
      };
      socket.onmessage = (event) => {
        const frame = JSON.parse(event.data);
        const sub = this.subscriptions.get(frame.db);
        if (frame.type === 'subscribed') {
          // Where the server starts, in the database as it is now: after a database was
          // deleted and created again it starts over, and later sequences compare with this.
          if (sub) sub.since = frame.since;
          this.onStatus('subscribed', frame);
        } else if (frame.type === 'change') {
          if (!sub || seqNumber(frame.seq) <= seqNumber(sub.since)) return;
          sub.since = frame.seq;
          this.onChange(frame.db, frame.change);
        } else if (frame.type === 'caught_up') {
          // Everything up to `last_seq` was looked at, also what a filter left out.
          if (sub && seqNumber(frame.last_seq) > seqNumber(sub.since)) sub.since = frame.last_seq;
          this.onStatus('caught_up', frame);
        } else {
          this.onStatus(frame.type, frame);
        }
      };
      socket.onclose = () => {
        if (this.socket !== socket) return;
        this.socket = null;
        this.onStatus('closed', {});
        if (this.closed) return;
        const wait = this.backoffMs;
        this.backoffMs = Math.min(this.backoffMs * 2, this.maxBackoffMs);
        setTimeout(() => this.connect(), wait);
      };
    }
  }

  global.OutpostFeed = OutpostFeed;
})(typeof window !== 'undefined' ? window : globalThis);
