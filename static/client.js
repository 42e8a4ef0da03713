// The rtkit browser client. In echo mode it connects to an rtkit server over
// WebSocket and logs every message sent and received. In the event modes it
// follows the server's event stream over WebSocket push, long polling or short
// polling, and counts requests, events and bytes. In chat mode it joins a
// channel under a display name, shows the channel's messages and members, and
// sends messages.
//
// client.html loads this file as a module, and as a classic script when the page
// is opened from file://, so it must not use import or export.
"use strict";

const MAX_LOG_LINES = 500;
const MAX_EVENT_ROWS = 200;
/** Characters of a sent or received message that its log line shows. */
const MAX_LOGGED_MESSAGE_CHARS = 200;
/** Characters of any other log line, which may quote what the server sent. */
const MAX_LOGGED_NOTE_CHARS = 2000;
/**
 * The epochs the page accepts. rtkit's hub picks 8 hex digits. The page puts
 * the epoch into every later poll URL and subscription, so a hostile server
 * must not be able to make those requests arbitrarily long.
 */
const EPOCH_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;
const GREETING = "Hello Server!";
const FILE_PAGE_URL = "ws://localhost:8765/ws";
const FILE_PAGE_POLL_URL = "http://localhost:8765/poll";
const SERVER_PAGE_URL = "http://127.0.0.1:8765/";

/** The longest Retry-After of a full server that the page waits for, in seconds. */
const MAX_RETRY_AFTER_S = 600;
/** Pause before the next poll after a failed one. */
const RETRY_DELAY_MS = 1000;
/** Bound on the page's GET /login and GET /ws requests. */
const CHECK_TIMEOUT_MS = 5000;
/** How long a long poll may wait for an event, below rtkit's maximum of 30 s. */
const LONG_POLL_WAIT_S = 25;
/** How much longer than its wait a poll may take before the page gives up on it. */
const POLL_TIMEOUT_MARGIN_MS = 10000;
const MIN_INTERVAL_S = 0.1;
const MAX_INTERVAL_S = 10;

// Close code meanings from RFC 6455 section 7.4.1 and, for 1012 to 1014, the
// IANA WebSocket Close Code Number Registry.
const CLOSE_CODES = new Map([
  [1000, "normal closure"],
  [1001, "going away"],
  [1002, "protocol error"],
  [1003, "unsupported data"],
  [1004, "reserved"],
  [1005, "no status received"],
  [1006, "abnormal closure, no close frame"],
  [1007, "invalid payload data"],
  [1008, "policy violation"],
  [1009, "message too big"],
  [1010, "mandatory extension missing"],
  [1011, "internal error"],
  [1012, "service restart"],
  [1013, "try again later"],
  [1014, "bad gateway"],
  [1015, "TLS handshake failed"],
]);

const LOOPBACK_HOSTS = new Set(["localhost", "127.0.0.1", "[::1]"]);

/**
 * The page's modes. `endpoint` is the kind of URL the mode connects to,
 * `follows` is true for the modes that follow the event stream, and
 * `reconnects` is true for the WebSocket modes that reconnect with backoff
 * when an opened connection is lost, and that send heartbeat pings.
 */
const MODES = {
  echo: { label: "Echo (WebSocket)", endpoint: "websocket", follows: false, reconnects: false },
  push: { label: "Events: WebSocket push", endpoint: "websocket", follows: true, reconnects: true },
  "long-poll": { label: "Events: long poll", endpoint: "poll", follows: true, reconnects: false },
  "short-poll": { label: "Events: short poll", endpoint: "poll", follows: true, reconnects: false },
  chat: { label: "Chat (WebSocket)", endpoint: "websocket", follows: false, reconnects: true },
};

/**
 * The reconnect, heartbeat and open timeout settings in seconds, with the
 * range a query parameter of the same name may set. A page opened with
 * ?backoff_base=0.1&heartbeat_interval=1 reconnects and pings faster, as the
 * tests do. A heartbeat_interval of 0 turns the heartbeat off.
 */
const SETTING_RANGES = {
  open_timeout: { fallback: 10, min: 0.1, max: 600 },
  backoff_base: { fallback: 1, min: 0.01, max: 60 },
  backoff_cap: { fallback: 30, min: 0.01, max: 3600 },
  stable_after: { fallback: 10, min: 0, max: 3600 },
  heartbeat_interval: { fallback: 10, min: 0, max: 3600 },
  heartbeat_timeout: { fallback: 5, min: 0.01, max: 3600 },
};

/** The settings in effect, read by init() from the page's query parameters. */
const settings = Object.fromEntries(
  Object.entries(SETTING_RANGES).map(([name, range]) => [name, range.fallback]),
);

const state = {
  mode: "echo",
  /** The running WebSocket session or poll loop, or null when closed. */
  session: null,
  status: "closed",
  /** The URL of each endpoint, derived from the page and kept when the user edits it. */
  urls: { websocket: "", poll: "" },
  /** Whether short polling did not start because the interval was invalid. */
  intervalRejected: false,
};

/**
 * The page's position in the server's event stream. It outlives mode switches,
 * so the next transport resumes after the last event the previous one received.
 */
const position = { epoch: null, seq: 0 };

/** Counters of the current run, reset on every mode switch and every Connect. */
let counters = newCounters();

// Elements looked up once by init().
const ui = {};

// Handlers for received JSON messages, by their "type" field. Each gets the
// parsed message and the text it came in. In chat mode, chatMessageHandlers
// handle the types they define.
const messageHandlers = {
  error(message) {
    log("error", describeServerError(message));
  },
  // The stream messages belong to the push mode. In echo mode they only appear
  // after the user sends a subscribe message by hand, so they are shown as text.
  subscribed(message, text) {
    if (!followsEvents()) {
      log("received", text);
      return;
    }
    acceptSubscribed(message);
  },
  event(message, text) {
    if (!followsEvents()) {
      log("received", text);
      return;
    }
    acceptEvents([message], wallClockMs());
  },
  unsubscribed(message, text) {
    log(followsEvents() ? "system" : "received", text);
  },
  // Sent to channel members, so outside chat mode only after a join typed by hand.
  presence(message, text) {
    log("received", text);
  },
  // The reply to a heartbeat ping, or to a ping typed by hand in echo mode.
  pong(message, text) {
    if (!acceptPong(state.session, message)) {
      log("received", text);
    }
  },
};

/** Returns the text shown for a server's {"type": "error", "code", "message"}. */
function describeServerError(message) {
  if (typeof message.message !== "string") {
    return `server error: ${quoteMessage(message)}`;
  }
  const code = typeof message.code === "string" ? ` (${message.code})` : "";
  return `server error${code}: ${message.message}`;
}

// Settings

/**
 * Reads the settings from the query parameters of `location` into `settings`.
 * Returns an error text for each parameter that is not a number in its range.
 * Such a parameter leaves its default in effect.
 */
function readSettings(location) {
  const parameters = new URLSearchParams(location.search);
  const errors = [];
  for (const [name, range] of Object.entries(SETTING_RANGES)) {
    const raw = parameters.get(name);
    if (raw === null) {
      continue;
    }
    const value = Number(raw);
    if (raw.trim() === "" || !Number.isFinite(value) || value < range.min || value > range.max) {
      errors.push(
        `invalid query parameter ${name}=${quoteValue(raw)}: pass seconds from ` +
          `${range.min} to ${range.max}. Using the default, ${range.fallback} s.`,
      );
      continue;
    }
    settings[name] = value;
  }
  return errors;
}

// URLs

/**
 * Derives the WebSocket URL from the page's location.
 *
 * A `url` query parameter wins. Otherwise the URL keeps the page's host and
 * path prefix, drops a final static/<file>, and ends in "ws", so a page at
 * http://host/proxy/8765/static/client.html connects to
 * ws://host/proxy/8765/ws. Pages opened from file:// get FILE_PAGE_URL.
 */
function deriveUrl(location) {
  const override = new URLSearchParams(location.search).get("url");
  if (override) {
    return override;
  }
  if (location.protocol === "file:") {
    return FILE_PAGE_URL;
  }
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}${serverPathPrefix(location)}ws`;
}

/**
 * Derives the /poll URL from the page's location the way deriveUrl derives the
 * WebSocket URL, so a page at http://host/proxy/8765/ polls
 * http://host/proxy/8765/poll. Pages opened from file:// get FILE_PAGE_POLL_URL.
 */
function derivePollUrl(location) {
  if (location.protocol === "file:") {
    return FILE_PAGE_POLL_URL;
  }
  return `${location.protocol}//${location.host}${serverPathPrefix(location)}poll`;
}

// Returns the path of the server's root as seen by the page, ending in "/".
function serverPathPrefix(location) {
  const directory = new URL(".", location.href).pathname;
  return directory.endsWith("/static/")
    ? directory.slice(0, -"static/".length)
    : directory;
}

/** Returns a close code with its meaning, and the reason when there is one. */
function describeClose(code, reason) {
  let meaning = CLOSE_CODES.get(code);
  if (meaning === undefined && code >= 3000 && code <= 3999) {
    meaning = "registered for libraries and frameworks";
  } else if (meaning === undefined && code >= 4000 && code <= 4999) {
    meaning = "application-defined";
  } else if (meaning === undefined) {
    meaning = "unassigned";
  }
  const text = `${code} (${meaning})`;
  return reason ? `${text}: ${reason}` : `${text}, no reason given`;
}

/**
 * Returns the lines explaining why a connection closed before it opened.
 *
 * The browser hides the HTTP status of a failed upgrade. `check` is what a
 * plain GET of the same URL returned (see checkUpgrade), or null when the
 * page could not send one. `credentials` are the token settings of the attempt.
 */
function explainFailedOpen(url, location, code, reason, check = null, credentials = { via: null }) {
  const closed = `The connection closed before it opened: ${describeClose(code, reason)}.`;
  const plainGet = "The browser hides the HTTP status of a failed upgrade, so the page sent a plain GET.";
  if (check?.status === 503) {
    return [
      `${closed} ${plainGet} ${describeUpgradeCheck(check)}`,
      "Press Connect again once other clients have left, or start the server with a larger max_connections.",
    ];
  }
  if (check?.status === 401) {
    const fix = adviseOnToken(expectedTokenMethod(check.error), credentials);
    return [`${closed} ${plainGet} ${describeUpgradeCheck(check)}`, fix];
  }
  const checked = check === null ? "" : ` ${describeUpgradeCheck(check)}`;
  const lines = [
    `${closed} ` +
      "The browser hides the HTTP status of a failed upgrade, so the likely " +
      `causes are that the server is not running, the URL or path (${url}) is ` +
      "wrong, or the server rejected this page's Origin with HTTP 403 (the " +
      `server's log gives the reason).${checked}`,
  ];
  const originProblem = describeOriginProblem(location, url);
  if (originProblem !== null) {
    lines.push(`If the server is running, this is the likely cause: ${originProblem}`);
  }
  return lines;
}

/**
 * Returns why rtkit's default origin check rejects this page's upgrades to
 * `url`, or null when it accepts them, following the rules in rtkit/origins.py.
 */
function describeOriginProblem(location, url) {
  if (location.protocol === "file:") {
    return (
      "This page was opened from a file, so it sent Origin: null, which rtkit " +
      `rejects by default. Open ${SERVER_PAGE_URL} instead, or start the ` +
      "server with `python -m rtkit serve --allow-origin null`."
    );
  }
  const allowHint =
    `start the server with \`python -m rtkit serve --allow-origin ${location.origin}\`` +
    ` or pass allowed_origins=["${location.origin}"] in Python`;
  if (!isSameServer(location, url)) {
    return (
      `This page's origin ${location.origin} is not the server's origin, so ` +
      `rtkit rejects it unless allowed. If the page is trusted, ${allowHint}.`
    );
  }
  if (!isIpOrLocalhost(location.hostname)) {
    return (
      `This page's host ${location.hostname} is a DNS name, which rtkit rejects ` +
      "unless allowed, because another site could point that name at this " +
      `machine (DNS rebinding). If the page is trusted, ${allowHint}.`
    );
  }
  return null;
}

/**
 * Returns why a poll from this page to `url` fails in the browser: the request
 * is cross-origin and rtkit sends no CORS headers, so the browser blocks the
 * response and fetch() rejects with a TypeError that gives no details.
 */
function explainCrossOriginPoll(location, url) {
  const serverPage = new URL(".", url).href;
  const origin = location.protocol === "file:" ? "null (opened from a file)" : location.origin;
  return (
    `This page's origin is ${origin}, but the poll URL's origin is ` +
    `${new URL(url).origin}. rtkit sends no CORS headers, so the browser blocks ` +
    `cross-origin poll responses. Open the page from the server instead: ${serverPage}`
  );
}

// The URL API writes IPv4 hosts as dotted quads and IPv6 hosts in brackets.
function isIpOrLocalhost(hostname) {
  return (
    hostname === "localhost" ||
    hostname.startsWith("[") ||
    /^\d{1,3}(\.\d{1,3}){3}$/.test(hostname)
  );
}

// Compares host and port the way rtkit's origin check does, which treats
// localhost, 127.0.0.1 and ::1 as one host.
function isSameServer(location, url) {
  let target;
  try {
    target = new URL(url);
  } catch {
    return false;
  }
  const normalizeHost = (host) => (LOOPBACK_HOSTS.has(host) ? "loopback" : host);
  const pagePort = location.port || (location.protocol === "https:" ? "443" : "80");
  const secure = target.protocol === "wss:" || target.protocol === "https:";
  const targetPort = target.port || (secure ? "443" : "80");
  return (
    normalizeHost(location.hostname) === normalizeHost(target.hostname) &&
    pagePort === targetPort
  );
}

// Log

function formatTime(date) {
  const pad = (value, width = 2) => String(value).padStart(width, "0");
  return (
    `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}` +
    `.${pad(date.getMilliseconds(), 3)}`
  );
}

const KIND_LABELS = { sent: "sent", received: "recv", system: "info", error: "error" };

/**
 * Appends a line of `kind` (sent, received, system or error) to the log.
 *
 * Text goes in through textContent only, because it comes from the server and
 * the user. Messages longer than MAX_LOGGED_MESSAGE_CHARS and other lines
 * longer than MAX_LOGGED_NOTE_CHARS are cut short, so a long message neither
 * fills the log nor puts megabytes into the page. The oldest lines are
 * dropped beyond MAX_LOG_LINES.
 */
function log(kind, text) {
  const now = new Date();
  const line = document.createElement("li");
  line.className = `line line-${kind}`;
  line.dataset.kind = kind;

  const time = document.createElement("time");
  time.className = "line-time";
  time.dateTime = now.toISOString();
  time.textContent = formatTime(now);

  const label = document.createElement("span");
  label.className = "line-kind";
  label.textContent = KIND_LABELS[kind];

  const body = document.createElement("span");
  body.className = "line-text";
  const message = kind === "sent" || kind === "received";
  body.textContent = abbreviate(text, message ? MAX_LOGGED_MESSAGE_CHARS : MAX_LOGGED_NOTE_CHARS);

  line.append(time, label, body);
  appendBounded(ui.log, line, MAX_LOG_LINES);
}

/** Returns a parsed message from the server as JSON, shortened for an error line. */
function quoteMessage(message) {
  return abbreviate(JSON.stringify(message), MAX_LOGGED_MESSAGE_CHARS);
}

/**
 * Returns `text` when it has at most `max` characters (code points, as
 * Python's len() counts them), else its first `max` characters followed by
 * "… (N characters in all)".
 */
function abbreviate(text, max) {
  // A string has at least as many UTF-16 code units as code points.
  if (text.length <= max) {
    return text;
  }
  const surrogatePairs = text.match(/[\uD800-\uDBFF][\uDC00-\uDFFF]/g)?.length ?? 0;
  const length = text.length - surrogatePairs;
  if (length <= max) {
    return text;
  }
  let end = 0;
  for (let count = 0; count < max; count += 1) {
    end += text.codePointAt(end) > 0xffff ? 2 : 1;
  }
  return `${text.slice(0, end)}… (${numberFormat.format(length)} characters in all)`;
}

/** Appends `child` to a scrolling list and drops its oldest children beyond `max`. */
function appendBounded(list, child, max) {
  const scroller = list.closest(".table-scroll") ?? list;
  const follow = isScrolledToBottom(scroller);
  list.append(child);
  while (list.childElementCount > max) {
    list.firstElementChild.remove();
  }
  if (follow) {
    scroller.scrollTop = scroller.scrollHeight;
  }
}

// Only follow new lines while the reader has not scrolled up to older ones.
function isScrolledToBottom(element) {
  return element.scrollHeight - element.scrollTop - element.clientHeight < 24;
}

// Status and controls

const STATUS_TEXT = {
  closed: "closed",
  connecting: "connecting",
  open: "open",
  closing: "closing",
  retrying: "retrying",
};

/** Updates the status element and the controls from `state`. */
function render() {
  const endpoint = MODES[state.mode].endpoint;
  const polling = endpoint === "poll" && state.status === "open";
  ui.status.textContent = polling ? "polling" : STATUS_TEXT[state.status];
  ui.status.dataset.state = state.status;
  const idle = state.status === "closed";
  const echoOpen = state.mode === "echo" && isReady();
  ui.url.readOnly = !idle;
  ui.connect.disabled = !idle;
  ui.disconnect.disabled = idle || state.status === "closing";
  ui.message.disabled = !echoOpen;
  ui.send.disabled = !echoOpen;
  renderChatControls();
  renderReconnect();
  renderHeartbeat();
}

/** Returns whether the connection is open and, with a token in the first message, accepted. */
function isReady() {
  return state.status === "open" && state.session?.authenticating !== true;
}

function setStatus(status) {
  state.status = status;
  render();
}

/** Explains the reconnect, heartbeat and open timeout settings in effect. */
function renderReliabilityNote() {
  const { backoff_base: base, backoff_cap: cap, stable_after: stableAfter } = settings;
  let text =
    `After a lost connection, attempt n waits a random time between 0 and ` +
    `min(${cap} s, ${base} s × 2^(n−1)) before it reconnects: exponential backoff ` +
    "with full jitter, so pages that lost the same server do not all come back " +
    `at the same moment. The count starts over after a connection stays up for ${stableAfter} s. `;
  if (settings.heartbeat_interval === 0) {
    text += "The heartbeat is off. ";
  } else {
    text +=
      `Every ${settings.heartbeat_interval} s the page sends {"type": "ping"} and ` +
      `expects a pong within ${settings.heartbeat_timeout} s. Without one, it ` +
      "reconnects. ";
  }
  text +=
    `A connection attempt that does not open within ${settings.open_timeout} s is ` +
    "given up and retried the same way. The query parameters backoff_base, " +
    "backoff_cap, stable_after, heartbeat_interval (0 turns it off), " +
    "heartbeat_timeout and open_timeout change these seconds.";
  ui.reliabilityNote.textContent = text;
}

/** Shows the controls of the current mode. */
function renderMode() {
  const mode = MODES[state.mode];
  ui.urlLabel.textContent = mode.endpoint === "poll" ? "Poll URL" : "WebSocket URL";
  ui.url.value = state.urls[mode.endpoint];
  ui.intervalField.hidden = state.mode !== "short-poll";
  ui.eventsPanel.hidden = !mode.follows;
  ui.sendForm.hidden = state.mode !== "echo";
  ui.chatPanel.hidden = state.mode !== "chat";
  ui.reliabilityNote.hidden = !mode.reconnects;
  document.body.dataset.mode = state.mode;
  for (const input of ui.modeInputs) {
    input.checked = input.value === state.mode;
  }
  render();
}

function followsEvents() {
  return MODES[state.mode].follows;
}

// Sessions

/** Opens a connection to `url`, or starts polling it, in the current mode. */
function connect(url) {
  if (state.session !== null) {
    return;
  }
  const mode = MODES[state.mode];

  if (!isValidUrl(url, mode.endpoint)) {
    const example = mode.endpoint === "poll" ? derivePollUrl(window.location) : "ws://127.0.0.1:8765/ws";
    log("error", `invalid URL ${JSON.stringify(url)}. Enter a URL such as ${example}.`);
    return;
  }
  let intervalSeconds = null;
  if (state.mode === "short-poll") {
    intervalSeconds = readInterval();
    if (intervalSeconds === null) {
      state.intervalRejected = true;
      log("error", "short polling not started: the interval is invalid");
      return;
    }
  }

  state.urls[mode.endpoint] = url;
  state.intervalRejected = false;
  resetCounters();
  clearProblem();

  let session;
  if (mode.endpoint === "poll") {
    const waitSeconds = state.mode === "long-poll" ? LONG_POLL_WAIT_S : null;
    session = newPollSession(url, waitSeconds, intervalSeconds);
  } else {
    session = newWebSocketSession(url, state.mode);
  }
  // The session is current before it starts, so that a failure to start ends it.
  state.session = session;
  session.start();
}

// Polls need an http(s) URL. WebSocket URLs are checked by the WebSocket
// constructor, whose SyntaxError connectSocket() reports.
function isValidUrl(url, endpoint) {
  let parsed;
  try {
    parsed = new URL(url);
  } catch {
    return false;
  }
  return endpoint !== "poll" || parsed.protocol === "http:" || parsed.protocol === "https:";
}

/** Starts a normal closure of the current connection, or stops polling. */
function disconnect() {
  const session = state.session;
  if (session === null || state.status === "closing") {
    return;
  }
  leaveChannelBeforeClosing();
  if (session.kind === "websocket" && session.transport !== null) {
    setStatus("closing");
    log("system", "closing the connection");
    session.closeRequested = true;
    stopHeartbeat(session);
    session.transport.close(1000, "client disconnected");
    return;
  }
  session.stop("client disconnected");
  endSession(session);
  log("system", describeStop(session));
}

/** Stops the current session at once and starts `mode` with fresh counters. */
function switchMode(mode) {
  if (!Object.hasOwn(MODES, mode) || mode === state.mode) {
    return;
  }
  const session = state.session;
  leaveChannelBeforeClosing();
  if (session !== null) {
    session.stop("client switched transport");
    endSession(session);
    log("system", `stopped ${MODES[state.mode].label}: ${describeStop(session)}`);
  }
  state.mode = mode;
  resetCounters();
  renderMode();
  log("system", `switched to ${MODES[mode].label}`);
  connect(ui.url.value.trim());
}

// Returns what stopping `session` did, for the log.
function describeStop(session) {
  if (session.kind === "websocket") {
    return session.closedSocket
      ? "closing the WebSocket with 1000 (normal closure)"
      : "stopped reconnecting";
  }
  const requests = counters.requests === 1 ? "1 request" : `${counters.requests} requests`;
  return `stopped polling after ${requests}`;
}

/** Marks `session` as ended, when it is still the current one. */
function endSession(session) {
  if (state.session === session) {
    state.session = null;
    setStatus("closed");
  }
}

// Failures are logged once per distinct message. Identical failures in a row
// are only counted, and the count is logged when the session recovers.
function reportFailure(session, text, retryText = `Retrying in ${RETRY_DELAY_MS / 1000} s`) {
  counters.errors += 1;
  renderCounters();
  session.failures += 1;
  if (text !== session.lastFailure) {
    session.lastFailure = text;
    log("error", `${text}. ${retryText}.`);
  }
}

function reportRecovery(session) {
  if (session.failures > 0) {
    const attempts = session.failures === 1 ? "1 failed attempt" : `${session.failures} failed attempts`;
    log("system", `recovered after ${attempts}`);
  }
  session.failures = 0;
  session.lastFailure = null;
}

/** Shows `text` as the current connection problem, above the mode's panel. */
function showProblem(text) {
  ui.problem.textContent = text;
  ui.problem.hidden = false;
}

function clearProblem() {
  ui.problem.hidden = true;
  ui.problem.textContent = "";
}

// WebSocket: echo, push and chat

/**
 * Returns a WebSocket session for `mode`: echo, push or chat.
 *
 * After each open, and after the server confirmed a token sent in the first
 * message, a push session subscribes to the event stream, a chat session
 * rejoins its channel and an echo session sends GREETING. Push and chat
 * sessions also send heartbeat pings, and reconnect with backoff when an
 * opened connection is lost.
 */
function newWebSocketSession(url, mode) {
  return {
    kind: "websocket",
    mode,
    url,
    follows: MODES[mode].follows,
    reconnects: MODES[mode].reconnects,
    transport: null,
    /** The current connection attempt: its credentials and the URL opened. */
    attempt: null,
    opened: false,
    everOpened: false,
    /** When the current connection opened, on the performance.now() clock. */
    openedAt: 0,
    /** Whether the page waits for the server to accept the token it sent in the first message. */
    authenticating: false,
    closeRequested: false,
    closedSocket: false,
    /** Reconnect attempts since the last connection that stayed up for stable_after seconds. */
    backoffAttempts: 0,
    /** The pending reconnect (attempt, delayMs, ceilingMs, minimumMs, dueAt, timer), or null. */
    retry: null,
    /** The heartbeat of the current connection, or null. */
    heartbeat: null,
    failures: 0,
    lastFailure: null,
    /** The last explanation of a failed reconnect, logged once until the session recovers. */
    lastDiagnosis: null,
    start() {
      connectSocket(this);
    },
    stop(reason) {
      cancelReconnect(this);
      stopHeartbeat(this);
      this.closeRequested = true;
      if (this.transport !== null) {
        this.transport.close(1000, reason);
        this.closedSocket = true;
      }
    },
  };
}

/**
 * Starts a connection attempt with the token settings in the form. With the
 * cookie method, the page logs in at /login first.
 */
function connectSocket(session) {
  setStatus("connecting");
  const credentials = readCredentials();
  // While the server is down, each retry fails the same way, and the first
  // failure is already in the log.
  if (session.failures === 0) {
    log("system", `connecting to ${session.url}${describeCredentials(credentials)}`);
  }
  const attempt = { credentials, url: session.url };
  session.attempt = attempt;
  session.opened = false;
  session.authenticating = false;
  if (credentials.via === "cookie") {
    logInThenOpen(session, attempt);
  } else {
    openSocket(session, attempt);
  }
}

function openSocket(session, attempt) {
  const { token, via } = attempt.credentials;
  if (via === "query") {
    attempt.url = withQueryToken(session.url, token);
  }
  // Events of an earlier socket of this session, or of a session that was
  // switched away from, must not change the page.
  const isCurrent = () => session.attempt === attempt && !session.closedSocket;
  try {
    session.transport = openWebSocket(attempt.url, {
      onOpen: () => {
        clearTimeout(attempt.openTimer);
        return isCurrent() && handleOpen(session);
      },
      onMessage: (data) => isCurrent() && handleMessage(session, data),
      onClose: (code, reason, wasClean) => {
        clearTimeout(attempt.openTimer);
        return isCurrent() && handleClose(session, code, reason, wasClean);
      },
      onError: () => isCurrent() && handleError(session),
    });
    attempt.openTimer = setTimeout(
      () => isCurrent() && handleOpenTimeout(session),
      settings.open_timeout * 1000,
    );
  } catch (error) {
    // The WebSocket constructor throws a SyntaxError for URLs it cannot use,
    // such as an ftp: URL or one with a fragment.
    session.transport = null;
    endSession(session);
    log("error", `cannot connect to ${session.url}: ${hideToken(error.message, token)}`);
  }
}

/**
 * Sends the token to GET /login as Authorization: Bearer, which returns a
 * session cookie, then opens the WebSocket. The browser sends that cookie with
 * the upgrade request.
 */
async function logInThenOpen(session, attempt) {
  const loginUrl = sameOriginUrl(session.url, "login");
  let failure = null;
  if (loginUrl === null) {
    failure =
      `cannot log in for ${session.url}: the cookie method needs the server on ` +
      `this page's origin ${window.location.origin}, because the browser keeps ` +
      "cookies per site and the page cannot read the response of another origin";
  } else {
    try {
      const response = await fetch(loginUrl, {
        cache: "no-store",
        headers: { Authorization: `Bearer ${attempt.credentials.token}` },
        signal: AbortSignal.timeout(CHECK_TIMEOUT_MS),
      });
      const text = await response.text();
      if (!response.ok) {
        failure = `logging in at ${loginUrl} failed: ${describeHttpError(response, text)}`;
      }
      // /login checks the token whatever way the server expects it, so a 401
      // means a wrong token.
      if (response.status === 401) {
        failure += `. ${adviseOnToken(attempt.credentials.via, attempt.credentials)}`;
      }
    } catch (error) {
      failure = `logging in at ${loginUrl} failed: ${describeFetchError(error)}`;
    }
  }
  if (session.attempt !== attempt || session.closeRequested) {
    return;
  }
  if (failure === null) {
    openSocket(session, attempt);
    return;
  }
  if (session.reconnects && session.everOpened) {
    const retry = scheduleReconnect(session);
    reportFailure(session, failure, describeRetry(retry));
    showProblem(failure);
    return;
  }
  endSession(session);
  log("error", failure);
  showProblem(failure);
}

/** Sends `text` on the open connection and logs `logText`. Returns whether it was sent. */
function send(text, logText = text) {
  const session = state.session;
  if (session === null || session.kind !== "websocket" || state.status !== "open") {
    log("error", "not sent: the connection is not open");
    return false;
  }
  if (!transmit(session, text)) {
    log("error", "not sent: the connection is closing");
    return false;
  }
  log("sent", logText);
  return true;
}

/** Sends `text` without logging it, and counts its bytes in the event modes. */
function transmit(session, text) {
  if (session.transport === null || !session.transport.send(text)) {
    return false;
  }
  if (session.follows) {
    counters.sent.payload += utf8Length(text);
    counters.sent.overhead += frameHeaderLength(utf8Length(text), true);
    renderCounters();
  }
  return true;
}

function handleOpen(session) {
  if (session.closeRequested) {
    return;
  }
  session.opened = true;
  session.everOpened = true;
  session.openedAt = performance.now();
  session.authenticating = session.attempt.credentials.via === "message";
  setStatus("open");
  log("system", `open: connected to ${session.url}`);
  reportRecovery(session);
  if (session.authenticating) {
    const { token } = session.attempt.credentials;
    send(JSON.stringify({ type: "auth", token }), JSON.stringify({ type: "auth", token: "…" }));
    return;
  }
  beginSession(session);
}

/** Starts what the session's mode does on an open, authenticated connection. */
function beginSession(session) {
  session.authenticating = false;
  session.lastDiagnosis = null;
  clearProblem();
  render();
  if (session.mode === "chat") {
    rejoinAfterOpen();
  } else if (!session.follows) {
    send(GREETING);
    ui.message.focus();
  } else {
    counters.requests += 1;
    renderCounters();
    renderBytesNote();
    const subscription = { type: "subscribe", since: position.seq };
    if (position.epoch !== null) {
      subscription.epoch = position.epoch;
    }
    send(JSON.stringify(subscription));
  }
  if (session.reconnects) {
    startHeartbeat(session);
  }
}

/**
 * Logs a received message.
 *
 * Text that parses as a JSON object with a string "type" goes to the handler
 * for that type. Other text, such as the echo replies, is shown as is.
 */
function handleMessage(session, data) {
  if (session.follows) {
    const length = typeof data === "string" ? utf8Length(data) : data.byteLength;
    counters.received.payload += length;
    counters.received.overhead += frameHeaderLength(length, false);
    renderCounters();
  }
  if (typeof data !== "string") {
    log("received", `binary message, ${data.byteLength} bytes`);
    return;
  }
  const message = parseTypedMessage(data);
  if (message === null) {
    log("received", data);
    return;
  }
  if (session.authenticating && acceptAuthReply(session, message)) {
    return;
  }
  if (message.type === "error" && acceptPingRejection(session, message)) {
    return;
  }
  let handler = null;
  if (session.mode === "chat" && Object.hasOwn(chatMessageHandlers, message.type)) {
    handler = chatMessageHandlers[message.type];
  } else if (Object.hasOwn(messageHandlers, message.type)) {
    handler = messageHandlers[message.type];
  }
  if (handler === null) {
    log("error", `unknown message type ${JSON.stringify(message.type)}: ${data}`);
    return;
  }
  handler(message, data);
}

/**
 * Handles the server's reply to the auth message. Returns whether `message`
 * was that reply: {"type": "authenticated"}, or an error from a server that
 * does not expect an auth message, after which the session starts anyway.
 * A server that rejects the token closes the connection with 1008 instead.
 */
function acceptAuthReply(session, message) {
  if (message.type === "authenticated") {
    log("system", "authenticated: the server accepted the token");
    beginSession(session);
    return true;
  }
  if (message.type === "error") {
    log("error", describeServerError(message));
    log(
      "system",
      "The server rejected the auth message, so it probably does not expect one. " +
        "Continuing without it. To send the token another way, change the choice " +
        "next to the Token field and press Connect.",
    );
    beginSession(session);
    return true;
  }
  return false;
}

// Returns the parsed object, or null when `text` is not a JSON object with a
// string "type".
function parseTypedMessage(text) {
  let value;
  try {
    value = JSON.parse(text);
  } catch {
    return null;
  }
  return isObject(value) && typeof value.type === "string" ? value : null;
}

function isObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

function handleError(session) {
  // Browsers give error events no details on purpose. A close event always
  // follows, and handleClose explains a connection that failed before opening.
  if (session.opened) {
    log("error", "connection error");
  }
}

/**
 * Gives up a connection attempt that did not open within open_timeout
 * seconds. Push and chat sessions retry it with backoff.
 *
 * A blocked server never sends the handshake response that would let the
 * attempt fail on its own, so without this the page would wait for good.
 */
function handleOpenTimeout(session) {
  if (session.opened || session.closeRequested) {
    return;
  }
  const text =
    `The WebSocket handshake did not complete within ${settings.open_timeout} s: the ` +
    "server probably accepted the connection but never answered the upgrade " +
    "request, so its event loop may be blocked, for example by a long computation " +
    "or time.sleep() in a notebook cell, or its process may be stopped";
  session.transport.close(1000, "open timeout");
  session.attempt = null;
  detachConnection(session);
  if (session.reconnects) {
    const retry = scheduleReconnect(session);
    reportFailure(session, text, describeRetry(retry));
  } else {
    counters.errors += 1;
    renderCounters();
    endSession(session);
    log("error", `${text}. Press Connect to try again.`);
  }
  showProblem(`${text}.`);
}

function handleClose(session, code, reason, wasClean) {
  const opened = session.opened;
  const attempt = session.attempt;
  detachConnection(session);
  if (session.closeRequested) {
    endSession(session);
    if (!opened) {
      log("system", "closed: the connection attempt was cancelled");
      return;
    }
    log(wasClean ? "system" : "error", `closed: ${describeClose(code, reason)}`);
    return;
  }
  const kind = wasClean ? "system" : "error";
  if (isAuthenticationFailure(code, reason)) {
    // A retry would send the same token again, so wait for the user to fix it.
    endSession(session);
    log("error", `closed: ${describeClose(code, reason)}. Not reconnecting: correct the token, then connect again.`);
    explainClose(code, reason, attempt.credentials);
    return;
  }
  if (session.reconnects && session.everOpened) {
    if (opened) {
      const retry = scheduleReconnectAfterLoss(session);
      log(kind, `closed: ${describeClose(code, reason)}. ${describeRetry(retry)}.`);
      explainClose(code, reason);
    } else {
      const retry = scheduleReconnect(session);
      reportFailure(session, `reconnecting to ${session.url} failed: ${describeClose(code, reason)}`, describeRetry(retry));
      diagnoseFailedReconnect(session, attempt);
    }
    return;
  }
  if (session.reconnects && !opened) {
    retryOrExplainFailedOpen(session, attempt, code, reason);
    return;
  }
  endSession(session);
  if (!opened) {
    explainFailedOpenAfterCheck(attempt, code, reason);
    return;
  }
  log(kind, `closed: ${describeClose(code, reason)}`);
  explainClose(code, reason);
}

/** Tells whether the server closed the connection because it rejected the token. */
function isAuthenticationFailure(code, reason) {
  return code === 1008 && reason.startsWith("authentication failed");
}

/** Clears the state of the session's connection, which closed or was given up. */
function detachConnection(session) {
  session.opened = false;
  session.authenticating = false;
  session.transport = null;
  stopHeartbeat(session);
  if (session.mode === "chat") {
    handleChatConnectionLost();
  }
}

/**
 * Logs and shows why the server closed an open connection, for the close
 * codes whose cause the page can name: 1008 from rtkit's rate limit or token
 * check, 1009 and 1011. `credentials` are the token settings of the
 * connection, which a token check's 1008 is about.
 */
function explainClose(code, reason, credentials = { via: null }) {
  let text = null;
  if (code === 1008 && reason.startsWith("rate limit")) {
    text =
      "The server closed the connection because this page sent more messages per " +
      "second than the server's max_rate allows. Every message counts, heartbeat " +
      "pings included. Send less often.";
  } else if (isAuthenticationFailure(code, reason)) {
    // Only servers that expect the token in the first message close with it.
    text = adviseOnToken("message", credentials);
  } else if (code === 1008) {
    text = "The server closed the connection for breaking one of its rules, which the reason names.";
  } else if (code === 1009) {
    text =
      "The server closed the connection because a message was larger than its " +
      "max_size. Send a smaller message, or start the server with a larger max_size.";
  } else if (code === 1011) {
    text =
      "The server closed the connection with an internal error: a handler raised " +
      "an exception (the server's log shows the traceback), or the server's " +
      "keepalive ping got no pong in time.";
  }
  if (text !== null) {
    log("error", text);
    showProblem(`Closed with ${describeClose(code, reason)}. ${text}`);
  }
}

// Reconnecting

/**
 * Schedules the next attempt after an open connection was lost. The backoff
 * starts over when the connection stayed up for stable_after seconds.
 */
function scheduleReconnectAfterLoss(session) {
  const upMs = performance.now() - session.openedAt;
  if (upMs >= settings.stable_after * 1000) {
    session.backoffAttempts = 0;
  }
  counters.errors += 1;
  renderCounters();
  return scheduleReconnect(session);
}

/**
 * Schedules the next connection attempt of `session` after a random delay:
 * exponential backoff with full jitter. Attempt n (from 1) waits between 0 and
 * min(backoff_cap, backoff_base × 2^(n−1)) seconds, so pages that lost the
 * same server do not all come back at the same moment. With `minimumMs`, such
 * as a server's Retry-After, the random delay comes on top of it.
 */
function scheduleReconnect(session, minimumMs = 0) {
  session.backoffAttempts += 1;
  return startRetryTimer(session, session.backoffAttempts, minimumMs);
}

function startRetryTimer(session, attempt, minimumMs) {
  const ceilingMs = Math.min(settings.backoff_cap, settings.backoff_base * 2 ** (attempt - 1)) * 1000;
  const delayMs = minimumMs + Math.random() * ceilingMs;
  const timer = setTimeout(() => reconnectNow(session), delayMs);
  session.retry = { attempt, delayMs, ceilingMs, minimumMs, dueAt: performance.now() + delayMs, timer };
  setStatus("retrying");
  return session.retry;
}

function describeRetry(retry) {
  const text = `Reconnecting in ${formatSeconds(retry.delayMs)} s (attempt ${retry.attempt})`;
  if (retry.minimumMs === 0) {
    return text;
  }
  return (
    `${text}: the server's Retry-After of ${retry.minimumMs / 1000} s plus a random ` +
    `${formatSeconds(retry.delayMs - retry.minimumMs)} s, so that clients turned away ` +
    "together do not all come back at the same moment"
  );
}

/**
 * Handles a failed first connection of a push or chat session. When a plain
 * GET of its URL shows that the server is full (HTTP 503), the session
 * retries after the server's Retry-After. Otherwise it ends, and the page
 * explains the failure.
 */
async function retryOrExplainFailedOpen(session, attempt, code, reason) {
  const check = await checkUpgrade(attempt.url);
  if (state.session !== session || session.closeRequested || session.attempt !== attempt) {
    return;
  }
  if (check?.status === 503) {
    const retry = scheduleReconnect(session, retryAfterMs(check));
    const text = describeUpgradeCheck(check).replace(/\.$/, "");
    reportFailure(session, text, describeRetry(retry));
    showProblem(`${text}. ${describeRetry(retry)}.`);
    return;
  }
  endSession(session);
  reportFailedOpen(attempt, code, reason, check);
}

/**
 * Returns the Retry-After of a 503 check in milliseconds: 0 without one, and
 * at most MAX_RETRY_AFTER_S seconds, so a hostile server cannot stop the
 * page's retries. The Reconnect now button skips the wait.
 */
function retryAfterMs(check) {
  return Math.min(check.retryAfterS ?? 0, MAX_RETRY_AFTER_S) * 1000;
}

function formatSeconds(milliseconds) {
  return (milliseconds / 1000).toFixed(milliseconds < 10000 ? 2 : 1);
}

/** Starts the pending reconnect of `session` without waiting for its delay. */
function reconnectNow(session) {
  if (session.retry === null) {
    return;
  }
  cancelReconnect(session);
  connectSocket(session);
}

function cancelReconnect(session) {
  if (session.retry !== null) {
    clearTimeout(session.retry.timer);
    session.retry = null;
  }
  renderReconnect();
}

let countdownTimer = null;

/** Shows the pending reconnect with its countdown, and the Reconnect now button. */
function renderReconnect() {
  const session = state.session;
  const retry = session?.kind === "websocket" ? session.retry : null;
  ui.reconnectBar.hidden = retry === null;
  if (retry === null) {
    clearInterval(countdownTimer);
    countdownTimer = null;
    return;
  }
  const remainingMs = Math.max(0, retry.dueAt - performance.now());
  const waitFor =
    retry.minimumMs === 0 ? "" : `, waiting for the server's Retry-After of ${retry.minimumMs / 1000} s`;
  ui.reconnectText.textContent =
    `reconnecting in ${(remainingMs / 1000).toFixed(1)} s (attempt ${retry.attempt}${waitFor})`;
  const data = ui.reconnectBar.dataset;
  data.attempt = String(retry.attempt);
  data.delayMs = retry.delayMs.toFixed(1);
  data.ceilingMs = retry.ceilingMs.toFixed(1);
  data.minimumMs = retry.minimumMs.toFixed(1);
  if (countdownTimer === null) {
    countdownTimer = setInterval(renderReconnect, 100);
  }
}

/**
 * Requests the URL of a failed reconnect with a plain GET, and logs what the
 * response shows, once per distinct text until the session recovers.
 */
async function diagnoseFailedReconnect(session, attempt) {
  const check = await checkUpgrade(attempt.url);
  // With 426, the server came back after the attempt failed, so the next
  // attempt is likely to succeed.
  if (check === null || check.status === 426) {
    return;
  }
  if (state.session !== session || session.opened) {
    return;
  }
  const text = describeUpgradeCheck(check);
  let problem = text;
  // The pending retry waits the plain backoff delay, so it starts again with
  // the server's Retry-After added, under the same attempt number.
  const pending = session.retry;
  if (check.status === 503 && session.attempt === attempt && pending !== null) {
    clearTimeout(pending.timer);
    const retry = startRetryTimer(session, pending.attempt, retryAfterMs(check));
    problem += ` ${describeRetry(retry)}.`;
  }
  showProblem(problem);
  if (text !== session.lastDiagnosis) {
    session.lastDiagnosis = text;
    log("error", problem);
  }
}

/**
 * Logs why the first connection of a session failed, after a plain GET of its
 * URL. The browser shows the page the status of that response, unlike the
 * status of a failed upgrade.
 */
async function explainFailedOpenAfterCheck(attempt, code, reason) {
  reportFailedOpen(attempt, code, reason, await checkUpgrade(attempt.url));
}

/** Logs and shows why a first connection failed, given the result of checkUpgrade(). */
function reportFailedOpen(attempt, code, reason, check) {
  const lines = explainFailedOpen(attempt.url, window.location, code, reason, check, attempt.credentials);
  for (const line of lines) {
    log("error", hideToken(line, attempt.credentials.token));
  }
  // A session started in the meantime has problems of its own.
  if (state.session === null) {
    showProblem(hideToken(lines.join(" "), attempt.credentials.token));
  }
}

/**
 * Requests the WebSocket URL `url` with a plain GET and returns the result as
 * { url, status, error, retryAfterS }, where error describes the response
 * status or the failed request, and retryAfterS is the Retry-After header in
 * seconds, or null without one. rtkit responds to such a GET with the status
 * an upgrade would get (503 when full, 401 without a valid token) or with 426
 * Upgrade Required. Returns null for a URL of another origin, whose response the
 * browser would hide from the page.
 */
async function checkUpgrade(url) {
  const target = sameOriginUrl(url, "");
  if (target === null) {
    return null;
  }
  const shownUrl = stripQuery(target);
  try {
    const response = await fetch(target, {
      cache: "no-store",
      signal: AbortSignal.timeout(CHECK_TIMEOUT_MS),
    });
    const text = await response.text();
    let error = describeHttpError(response, text);
    const retryAfter = response.headers.get("Retry-After")?.trim() ?? null;
    // Retry-After may also be an HTTP date, which the page treats as absent.
    const retryAfterS = retryAfter !== null && /^\d+$/.test(retryAfter) ? Number(retryAfter) : null;
    if (retryAfter !== null) {
      error += ` (Retry-After: ${retryAfter}${retryAfterS === null ? "" : " s"})`;
    }
    return { url: shownUrl, status: response.status, error, retryAfterS };
  } catch (error) {
    return { url: shownUrl, status: null, error: describeFetchError(error), retryAfterS: null };
  }
}

/** Returns a sentence on the result of checkUpgrade(), or null without one. */
function describeUpgradeCheck(check) {
  if (check === null) {
    return null;
  }
  const request = `GET ${check.url}`;
  switch (check.status) {
    case null:
      return `${request} failed as well: ${check.error}.`;
    case 426:
      return (
        `${request} returned HTTP 426 Upgrade Required, so a server is running ` +
        "there that has room for this connection and needs no token from it."
      );
    case 503:
      return `The server is full: ${request} returned ${check.error}.`;
    case 401:
      return `The server requires a token: ${request} returned ${check.error}.`;
    default:
      return `${request} returned ${check.error}.`;
  }
}

/**
 * Returns `url`, a WebSocket URL, as an http(s) URL resolved against `path`
 * ("" for the URL itself, "login" for the login next to it), or null when it
 * is invalid or not of this page's origin.
 */
function sameOriginUrl(url, path) {
  let target;
  try {
    target = new URL(url);
  } catch {
    return null;
  }
  const schemes = { "ws:": "http:", "wss:": "https:", "http:": "http:", "https:": "https:" };
  if (!Object.hasOwn(schemes, target.protocol)) {
    return null;
  }
  target.protocol = schemes[target.protocol];
  target.hash = "";
  if (path !== "") {
    target = new URL(path, target);
  }
  return target.origin === window.location.origin ? target.href : null;
}

/** Returns why fetch() rejected: a timeout, a network error or another error. */
function describeFetchError(error) {
  if (error.name === "TimeoutError") {
    return `no response within ${CHECK_TIMEOUT_MS / 1000} s, so the server may be blocked`;
  }
  if (error instanceof TypeError) {
    return `a network error (${error.message}), so the server is probably not running`;
  }
  return `${error.name}: ${error.message}`;
}

// Heartbeat
//
// Browsers reply to the server's WebSocket pings but cannot send their own, so
// the page sends {"type": "ping", "id"} messages, and rtkit replies to each
// with {"type": "pong", "id", "ts"}. A pong measures the round trip through the
// server's event loop. Without one, that loop is probably blocked.

/** Sends the first heartbeat ping of a connection, unless heartbeat_interval is 0. */
function startHeartbeat(session) {
  if (settings.heartbeat_interval === 0) {
    return;
  }
  session.heartbeat = { nextId: 1, pending: null, timer: null, roundTripMs: null };
  sendPing(session);
}

function stopHeartbeat(session) {
  if (session.heartbeat !== null) {
    clearTimeout(session.heartbeat.timer);
    session.heartbeat = null;
  }
  renderHeartbeat();
}

function sendPing(session) {
  const heartbeat = session.heartbeat;
  const id = heartbeat.nextId;
  heartbeat.nextId += 1;
  heartbeat.pending = { id, sentAt: performance.now() };
  if (!transmit(session, JSON.stringify({ type: "ping", id }))) {
    // The connection is closing, and its close event stops the heartbeat.
    return;
  }
  heartbeat.timer = setTimeout(() => handleMissingPong(session), settings.heartbeat_timeout * 1000);
  renderHeartbeat();
}

/**
 * Records the pong of the pending ping and schedules the next ping one
 * interval after this one was sent. Returns false for any other pong.
 */
function acceptPong(session, message) {
  const heartbeat = session?.heartbeat;
  if (!heartbeat || heartbeat.pending === null || message.id !== heartbeat.pending.id) {
    return false;
  }
  const now = performance.now();
  heartbeat.roundTripMs = now - heartbeat.pending.sentAt;
  const nextAt = heartbeat.pending.sentAt + settings.heartbeat_interval * 1000;
  heartbeat.pending = null;
  clearTimeout(heartbeat.timer);
  heartbeat.timer = setTimeout(() => sendPing(session), Math.max(0, nextAt - now));
  renderHeartbeat();
  return true;
}

/**
 * Turns the heartbeat off when the server rejected a ping as an unknown
 * message type, as servers without the ping command do. Returns whether
 * `message` was that rejection. The page sends no other command that a
 * server could call unknown, so an unknown_type error while a ping waits for
 * its pong is the ping's.
 */
function acceptPingRejection(session, message) {
  const heartbeat = session.heartbeat;
  if (!heartbeat || heartbeat.pending === null || message.code !== "unknown_type") {
    return false;
  }
  log("error", describeServerError(message));
  log("system", "The server does not answer pings, so the heartbeat is off for this connection.");
  stopHeartbeat(session);
  return true;
}

/**
 * Gives up the connection whose server sent no pong in time, and reconnects.
 *
 * The close handshake needs a close frame from the server, which a blocked
 * server does not send, so the page stops listening to the socket at once.
 * NOTE: browsers delay timers in background tabs, so there the page can
 * notice a missing pong later than heartbeat_timeout.
 */
function handleMissingPong(session) {
  if (session.closeRequested) {
    return;
  }
  const pending = session.heartbeat.pending;
  const timeout = formatSeconds(settings.heartbeat_timeout * 1000);
  const text =
    `The server is not answering: no pong within ${timeout} s of ping ${pending.id}. ` +
    "Its event loop may be blocked, for example by a long computation or " +
    "time.sleep() in a notebook cell.";
  session.transport.close(4000, "no pong in time");
  session.attempt = null;
  detachConnection(session);
  const retry = scheduleReconnectAfterLoss(session);
  log("error", `${text} Closing the connection. ${describeRetry(retry)}.`);
  showProblem(text);
}

/** Shows the heartbeat's last round trip in the header, when it runs. */
function renderHeartbeat() {
  const heartbeat = state.session?.kind === "websocket" ? state.session.heartbeat : null;
  ui.heartbeat.hidden = heartbeat === null;
  if (heartbeat === null) {
    delete ui.heartbeat.dataset.roundTripMs;
    return;
  }
  if (heartbeat.roundTripMs === null) {
    ui.heartbeat.textContent = "ping sent, waiting for the pong";
    return;
  }
  ui.heartbeat.textContent = `round trip ${heartbeat.roundTripMs.toFixed(1)} ms`;
  ui.heartbeat.dataset.roundTripMs = heartbeat.roundTripMs.toFixed(3);
}

// Tokens

/** Returns the token and how to send it, from the form; `via` is null without a token. */
function readCredentials() {
  const token = ui.token.value.trim();
  return { token, via: token === "" ? null : ui.tokenVia.value };
}

function describeCredentials(credentials) {
  switch (credentials.via) {
    case "query":
      return " with the token in the query string";
    case "message":
      return ", then sending the token in the first message";
    case "cookie":
      return " after logging in at /login for a session cookie";
    default:
      return "";
  }
}

/**
 * Returns how the server on the other end expects the token, from the text of
 * rtkit's 401 response to a plain GET of the WebSocket URL: "query", "cookie",
 * or null when the text names neither.
 */
function expectedTokenMethod(errorText) {
  if (/cookie/i.test(errorText)) {
    return "cookie";
  }
  if (errorText.includes("?token=")) {
    return "query";
  }
  return null;
}

/**
 * Returns what to do about a token that the server did not accept.
 *
 * `expected` is how the server expects the token ("query", "message",
 * "cookie", or null when unknown), and `credentials` how the page sent it.
 * Sent the expected way, the token itself was wrong. Otherwise the server
 * found no token where it looked.
 */
function adviseOnToken(expected, credentials) {
  const method = (via) => ui.tokenVia.querySelector(`option[value="${via}"]`).textContent;
  if (credentials.via === null && expected === null) {
    return "The server requires a token: enter it in the Token field, then press Connect.";
  }
  if (credentials.via === null) {
    return (
      `The server expects a token ${method(expected)}: enter it in the Token field, ` +
      `choose "${method(expected)}" next to it, then press Connect.`
    );
  }
  if (expected !== null && expected !== credentials.via) {
    return (
      `The server expects the token ${method(expected)}, but the page sent it ` +
      `${method(credentials.via)}: choose "${method(expected)}" next to the Token ` +
      "field, then press Connect."
    );
  }
  if (expected === null) {
    return (
      `The server rejected the token that the page sent ${method(credentials.via)}: ` +
      "check the token and how the page sends it (the choice next to the Token " +
      "field), then press Connect."
    );
  }
  return (
    `The server rejected the token that the page sent ${method(credentials.via)}: ` +
    "check the Token field, then press Connect."
  );
}

function withQueryToken(url, token) {
  const target = new URL(url);
  target.searchParams.set("token", token);
  return target.href;
}

/** Returns `text` with every copy of `token`, as is and URL-encoded, replaced by "…". */
function hideToken(text, token) {
  if (!token) {
    return text;
  }
  return text.split(token).join("…").split(encodeURIComponent(token)).join("…");
}

function openWebSocket(url, events) {
  const socket = new WebSocket(url);
  socket.binaryType = "arraybuffer";
  socket.addEventListener("open", () => events.onOpen());
  socket.addEventListener("message", (event) => events.onMessage(event.data));
  socket.addEventListener("error", () => events.onError());
  socket.addEventListener("close", (event) =>
    events.onClose(event.code, event.reason, event.wasClean),
  );
  return {
    // The socket is already closing once the server's close frame arrived,
    // although the close event that updates the status comes later.
    send(text) {
      if (socket.readyState !== WebSocket.OPEN) {
        return false;
      }
      socket.send(text);
      return true;
    },
    close: (code, reason) => socket.close(code, reason),
    /** The extensions the server accepted, such as permessage-deflate. */
    extensions: () => socket.extensions,
  };
}

// Chat

/** The maximum display name length in code points, MAX_NAME_LENGTH in rtkit/push.py. */
const MAX_NAME_LENGTH = 32;
/** Valid channel names, as CHANNEL_PATTERN in rtkit/hub.py accepts them. */
const CHANNEL_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$/;
/**
 * Printable text as Python's str.isprintable() defines it, which the server
 * checks names with: no character of the Unicode categories Other (C) or
 * Separator (Z), except the ASCII space.
 */
const PRINTABLE = /^(?:[^\p{C}\p{Z}]| )*$/u;
const MAX_CHAT_MESSAGES = 500;
/** The sender id of messages from the notebook, SERVER_SENDER in rtkit/widgets.py. */
const NOTEBOOK_SENDER_ID = "server";

/**
 * The chat's membership and its position in the channel's event stream.
 *
 * `phase` is "out", "joining" (join sent), "joined", "leaving" (leave sent) or
 * "away" (joined, but the connection was lost, so the page rejoins once it
 * reconnects). The position (`channel`, `epoch`, `seq`) outlives leaving and
 * mode switches, so joining the same channel again resumes after the last
 * message shown.
 */
const chat = {
  phase: "out",
  /** The name and channel of the current join, or null when out. */
  membership: null,
  /** The channel whose messages the list shows, or null before the first join. */
  channel: null,
  epoch: null,
  seq: 0,
  /** When the page first joined `channel`, in ms since the Unix epoch. */
  firstJoinMs: 0,
  /** The latest seq reported when the page last joined `channel`. The server replayed the messages up to it. */
  replaySeq: 0,
  /** The server's id of the current connection, once the page identified itself among the members. */
  selfId: null,
  /** The ids of every connection the page chatted on, to mark its own messages replayed after a reconnect. */
  ownIds: new Set(),
  /** Texts sent on the current connection that the server has neither published nor rejected yet, oldest first. */
  pendingTexts: [],
  /** The channel's members, as the last "presence" message listed them. */
  members: [],
};

// Handlers for the messages a chat session receives, by type. A message of
// another channel, or one that the chat's phase does not expect, goes into the
// log as received text. Other types go to messageHandlers.
const chatMessageHandlers = {
  error(message) {
    const text = describeServerError(message);
    log("error", text);
    showChatError(text);
    // The server replies to commands in the order sent, and the page sends
    // nothing else while a join or leave is pending, so the error is its reply.
    if (chat.phase === "joining" || chat.phase === "leaving") {
      endMembership();
    } else if (chat.phase === "joined") {
      // Only messages are sent while joined, so the oldest one was rejected.
      chat.pendingTexts.shift();
    }
  },
  subscribed(message, text) {
    if (chat.phase !== "joining" || message.channel !== chat.membership.channel) {
      log("received", text);
      return;
    }
    acceptJoin(message);
  },
  event(message, text) {
    const member = chat.phase === "joined" || chat.phase === "leaving";
    if (!member || message.channel !== chat.channel) {
      log("received", text);
      return;
    }
    acceptChatEvent(message);
  },
  presence(message, text) {
    if (
      chat.membership === null ||
      message.channel !== chat.membership.channel ||
      !Array.isArray(message.members)
    ) {
      log("received", text);
      return;
    }
    chat.members = message.members.filter(
      (member) => isObject(member) && typeof member.id === "string" && typeof member.name === "string",
    );
    identifySelf();
    renderPresence();
    const names = chat.members.map((member) => member.name).join(", ");
    log("system", `members of ${message.channel}: ${names || "none"}`);
  },
  unsubscribed(message, text) {
    if (chat.phase !== "leaving" || message.channel !== chat.membership.channel) {
      log("received", text);
      return;
    }
    log("system", `left ${message.channel}`);
    endMembership();
  },
};

/**
 * Returns the display name and channel from the join form, trimmed, or null
 * after showing an inline error for each invalid one. The rules are the
 * server's, so a join the page sends is not rejected for its fields.
 */
function readJoinFields() {
  const name = ui.chatName.value.trim();
  const channel = ui.chatChannel.value.trim();
  const length = [...name].length;
  const validName = length >= 1 && length <= MAX_NAME_LENGTH && PRINTABLE.test(name);
  const validChannel = CHANNEL_PATTERN.test(channel);
  setFieldError(
    ui.chatName,
    ui.chatNameError,
    validName
      ? null
      : `Invalid name ${quoteValue(ui.chatName.value)}: enter 1 to ` +
          `${MAX_NAME_LENGTH} printable characters, such as ada.`,
  );
  setFieldError(
    ui.chatChannel,
    ui.chatChannelError,
    validChannel
      ? null
      : `Invalid channel ${quoteValue(ui.chatChannel.value)}: use 1 to 64 letters, ` +
          "digits and _ . : -, starting with a letter or digit, such as lobby.",
  );
  if (!validName) {
    ui.chatName.focus();
  } else if (!validChannel) {
    ui.chatChannel.focus();
  }
  return validName && validChannel ? { name, channel } : null;
}

/**
 * Returns `text` as a JSON string in which every character that is not
 * printable is escaped, so an error message shows what a field contains.
 * JSON.stringify alone leaves characters such as U+2028 unescaped.
 */
function quoteValue(text) {
  // One escape per UTF-16 code unit, as JSON writes characters beyond U+FFFF.
  const escape = (character) =>
    Array.from({ length: character.length }, (_, index) => {
      const unit = character.charCodeAt(index);
      return `\\u${unit.toString(16).padStart(4, "0")}`;
    }).join("");
  return JSON.stringify(text).replace(/[\p{C}\p{Z}]/gu, (character) =>
    character === " " ? character : escape(character),
  );
}

/** Shows `text` as the error of `input`, or clears its error when `text` is null. */
function setFieldError(input, element, text) {
  element.textContent = text ?? "";
  element.hidden = text === null;
  if (text === null) {
    input.removeAttribute("aria-invalid");
  } else {
    input.setAttribute("aria-invalid", "true");
  }
}

function showChatError(text) {
  ui.chatError.textContent = text;
  ui.chatError.hidden = false;
}

function hideChatError() {
  ui.chatError.hidden = true;
  ui.chatError.textContent = "";
}

/** Joins the channel in the join form, when both fields are valid. */
function joinChannel() {
  const fields = readJoinFields();
  if (fields === null || chat.phase !== "out") {
    return;
  }
  if (!isReady()) {
    showChatError("Not joined: the connection is not open. Press Connect, then Join.");
    return;
  }
  hideChatError();
  if (fields.channel !== chat.channel) {
    chat.channel = fields.channel;
    chat.seq = 0;
    chat.replaySeq = 0;
    chat.firstJoinMs = wallClockMs();
    ui.chatMessages.replaceChildren();
  }
  chat.membership = fields;
  sendJoin();
}

// Sends a join that resumes after the last message shown. With since 0, on the
// first join of a channel, the server replays every message still in the
// channel's history.
function sendJoin() {
  const join = {
    type: "join",
    channel: chat.membership.channel,
    name: chat.membership.name,
    since: chat.seq,
  };
  // When the epoch is not the server's current one, since belongs to an
  // earlier run, so the server replays from the start of the current one.
  if (chat.epoch !== null) {
    join.epoch = chat.epoch;
  }
  setChatPhase("joining");
  send(JSON.stringify(join));
}

/** Rejoins the channel after a reconnect, resuming after the last message shown. */
function rejoinAfterOpen() {
  if (chat.phase !== "away") {
    return;
  }
  log("system", `rejoining ${chat.membership.channel} after seq ${chat.seq}`);
  sendJoin();
}

function leaveChannel() {
  const pending = chat.phase === "joined" || chat.phase === "joining";
  if (pending && send(JSON.stringify({ type: "leave", channel: chat.membership.channel }))) {
    setChatPhase("leaving");
    return;
  }
  // Away, or the connection is closing: the server drops the membership with it.
  endMembership();
}

/** Leaves the channel before the page closes the chat's connection on purpose. */
function leaveChannelBeforeClosing() {
  if (chat.phase === "out") {
    return;
  }
  const member = chat.phase === "joined" || chat.phase === "joining";
  if (member && state.status === "open") {
    send(JSON.stringify({ type: "leave", channel: chat.membership.channel }));
  }
  endMembership();
}

function endMembership() {
  chat.membership = null;
  chat.members = [];
  setChatPhase("out");
}

/** Updates the chat after its connection closed, on purpose or not. */
function handleChatConnectionLost() {
  chat.selfId = null;
  // Texts still pending were lost with the connection, or their events come
  // back in the replay, where ownIds marks them once selfId was known.
  chat.pendingTexts = [];
  chat.members = [];
  if (chat.phase === "joined" || chat.phase === "joining") {
    setChatPhase("away");
  } else if (chat.phase === "leaving") {
    endMembership();
  } else {
    renderPresence();
  }
}

function setChatPhase(phase) {
  chat.phase = phase;
  render();
  renderPresence();
}

/** Records the server's confirmation of a join: its epoch and any missed messages. */
function acceptJoin(message) {
  const problem = findSubscribedProblem(message, chat.epoch, chat.seq);
  if (problem !== null) {
    // The server did subscribe the page, so it is a member, but the position
    // stays as it was.
    log("error", `invalid subscribed message ${quoteMessage(message)}: ${problem}`);
    setChatPhase("joined");
    return;
  }
  if (chat.epoch !== null && message.epoch !== chat.epoch && chat.seq > 0) {
    log("system", `server restarted: new epoch ${message.epoch} (was ${chat.epoch}), continuing from seq 0`);
    appendChatNotice("The server restarted. The messages below are from its new run.");
    chat.seq = 0;
  }
  if (message.reset === true) {
    log("system", `position reset: seq ${chat.seq} is past the channel's latest message, continuing from seq 0`);
    appendChatNotice("The server reset this channel: the messages below are from its new stream.");
    chat.seq = 0;
  }
  chat.epoch = message.epoch;
  chat.replaySeq = message.seq;
  if (message.missed > 0) {
    const text = `missed ${message.missed} messages after seq ${chat.seq}: they fell out of the server's history`;
    log("error", text);
    appendChatNotice(`${message.missed} messages missed: they fell out of the server's history.`);
    chat.seq += message.missed;
  }
  const { channel, name } = chat.membership;
  if (message.seq > chat.seq) {
    log("system", `joined ${channel} as ${name}: the server replays seq ${chat.seq + 1} to ${message.seq} from its history`);
  } else {
    log("system", `joined ${channel} as ${name} after seq ${chat.seq}`);
  }
  setChatPhase("joined");
}

/** Shows one event of the channel, unless the list already has its seq. */
function acceptChatEvent(event) {
  if (!isValidEvent(event)) {
    log("error", `invalid event: ${quoteMessage(event)}`);
    return;
  }
  if (event.seq <= chat.seq) {
    log("error", `duplicate message skipped: seq ${event.seq} of ${event.channel}, already shown`);
    return;
  }
  chat.seq = event.seq;
  appendChatMessage(event);
}

/**
 * Appends a message to the list. The list keeps the last MAX_CHAT_MESSAGES,
 * and every text goes in through textContent.
 */
function appendChatMessage(event) {
  const data = event.data;
  const isChat = isObject(data) && isObject(data.from) && typeof data.text === "string";
  let origin = "other";
  if (isChat && data.from.id === NOTEBOOK_SENDER_ID) {
    origin = "notebook";
  } else if (isChat) {
    origin = isOwnMessage(data) ? "own" : "member";
  }

  const item = document.createElement("li");
  item.className = `chat-message chat-${origin}`;
  item.dataset.seq = String(event.seq);
  item.dataset.origin = origin;
  const sentAtMs = timestampMs(event.ts);
  const replayed = event.seq <= chat.replaySeq || (sentAtMs !== null && sentAtMs < chat.firstJoinMs);
  if (replayed) {
    item.classList.add("chat-earlier");
    item.title = "Sent before this page joined or rejoined, then replayed from the server's history";
  }

  const meta = document.createElement("div");
  meta.className = "chat-meta";
  const sender = document.createElement("span");
  sender.className = "chat-sender";
  sender.textContent = isChat ? String(data.from.name ?? data.from.id) : "event without a sender";
  meta.append(sender);
  const tags = { own: "you", notebook: "from the notebook" };
  if (Object.hasOwn(tags, origin)) {
    const tag = document.createElement("span");
    tag.className = "chat-tag";
    tag.textContent = tags[origin];
    meta.append(tag);
  }
  const time = document.createElement("time");
  time.className = "chat-time";
  if (sentAtMs === null) {
    log("error", describeInvalidTime(event));
    time.dataset.invalid = "true";
    time.title = `The server sent ts ${describeValue(event.ts)}, which is not a time.`;
    time.textContent = "invalid time";
  } else {
    const sentAt = new Date(sentAtMs);
    time.dateTime = sentAt.toISOString();
    time.textContent = formatTime(sentAt).slice(0, "hh:mm:ss".length);
  }
  meta.append(time);

  const text = document.createElement("p");
  text.className = "chat-text";
  text.textContent = isChat ? data.text : JSON.stringify(data);

  item.append(meta, text);
  appendBounded(ui.chatMessages, item, MAX_CHAT_MESSAGES);
}

function appendChatNotice(text) {
  const item = document.createElement("li");
  item.className = "chat-notice";
  item.textContent = text;
  appendBounded(ui.chatMessages, item, MAX_CHAT_MESSAGES);
}

/**
 * Returns whether this page sent the chat message `data`.
 *
 * The server sends a client neither its id nor which message was its own, so
 * the page matches its oldest pending text by name and text, because the
 * server publishes a client's messages in the order sent. The sender id of the
 * match is kept as the page's own.
 * NOTE: another member with the same name who sends the same text at the same
 * time can be taken for this page.
 */
function isOwnMessage(data) {
  const from = data.from;
  if (
    chat.pendingTexts.length > 0 &&
    from.name === chat.membership?.name &&
    data.text === chat.pendingTexts[0]
  ) {
    chat.pendingTexts.shift();
    learnSelfId(from.id);
    return true;
  }
  return typeof from.id === "string" && chat.ownIds.has(from.id);
}

// Takes the only member with this page's name that is not an earlier
// connection of the page as the page itself. With several, the first own
// message identifies it.
function identifySelf() {
  if (chat.selfId !== null || chat.phase !== "joined") {
    return;
  }
  const candidates = chat.members.filter(
    (member) => member.name === chat.membership.name && !chat.ownIds.has(member.id),
  );
  if (candidates.length === 1) {
    learnSelfId(candidates[0].id);
  }
}

function learnSelfId(id) {
  if (typeof id !== "string" || chat.selfId !== null) {
    return;
  }
  chat.selfId = id;
  chat.ownIds.add(id);
  renderPresence();
}

/** Sends the text in the chat's send box to the joined channel. */
function sendChatMessage() {
  const text = ui.chatText.value;
  if (text.trim() === "" || chat.phase !== "joined") {
    return;
  }
  hideChatError();
  // The page leaves the length check to the server, which rejects texts over
  // 4096 characters with an "invalid_text" error.
  const message = { type: "message", channel: chat.membership.channel, text };
  if (send(JSON.stringify(message))) {
    chat.pendingTexts.push(text);
    ui.chatText.value = "";
  }
}

function renderPresence() {
  const items = chat.members.map((member) => {
    const item = document.createElement("li");
    item.className = "member";
    item.dataset.id = member.id;
    const name = document.createElement("span");
    name.className = "member-name";
    name.textContent = member.name;
    item.append(name);
    if (member.id === chat.selfId) {
      item.classList.add("member-self");
      const tag = document.createElement("span");
      tag.className = "chat-tag";
      tag.textContent = "you";
      item.append(tag);
    }
    return item;
  });
  if (items.length === 0) {
    const empty = document.createElement("li");
    empty.className = "presence-empty";
    empty.textContent = chat.phase === "away" ? "unknown while disconnected" : "join a channel to see who is in it";
    items.push(empty);
  }
  ui.presence.replaceChildren(...items);
  ui.presenceCount.textContent = chat.members.length > 0 ? `(${chat.members.length})` : "";
}

/** Updates the chat's controls and state line from `chat` and the connection status. */
function renderChatControls() {
  const open = state.mode === "chat" && isReady();
  const phase = chat.phase;
  ui.join.disabled = !(open && phase === "out");
  ui.leave.disabled = phase === "out" || phase === "leaving";
  ui.chatName.readOnly = phase !== "out";
  ui.chatChannel.readOnly = phase !== "out";
  const canSend = open && phase === "joined";
  ui.chatText.disabled = !canSend;
  ui.chatSend.disabled = !canSend;
  ui.chatText.placeholder = canSend ? "Type a message and press Enter" : "Join a channel, then type a message";
  ui.chatState.dataset.phase = phase;
  ui.chatState.textContent = describeChatState();
}

function describeChatState() {
  const membership = chat.membership;
  switch (chat.phase) {
    case "joining":
      return `Joining ${membership.channel} as ${membership.name}…`;
    case "joined":
      return `In ${membership.channel} as ${membership.name}`;
    case "leaving":
      return `Leaving ${membership.channel}…`;
    case "away":
      return `Connection lost. Reconnecting, then rejoining ${membership.channel} after seq ${chat.seq}.`;
  }
  const outside = {
    open: "Not in a channel. Enter a display name and press Join.",
    closed: "Not connected. Press Connect, then Join.",
    connecting: "Connecting…",
    closing: "Closing the connection…",
    retrying: "Connection lost. Reconnecting…",
  };
  return outside[state.status];
}

// Polling

/**
 * Returns a poll session for `url`. With `waitSeconds`, each request is a long
 * poll and the next one goes out as soon as a response arrives. Otherwise the
 * requests are short polls that start every `intervalSeconds`, one at a time.
 */
function newPollSession(url, waitSeconds, intervalSeconds) {
  return {
    kind: "poll",
    url,
    endpoint: stripQuery(url),
    waitSeconds,
    intervalMs: intervalSeconds === null ? null : intervalSeconds * 1000,
    nextAt: performance.now(),
    request: null,
    timer: null,
    stopped: false,
    failures: 0,
    lastFailure: null,
    start() {
      counters.pollEndpoint = this.endpoint;
      // A long poll on a quiet server gets no response for its whole wait, so
      // the status shows that the page polls, not that the server responded.
      setStatus("open");
      renderBytesNote();
      if (waitSeconds === null) {
        log("system", `short polling ${url} every ${intervalSeconds} s`);
      } else {
        log("system", `long polling ${url}, each request waiting up to ${waitSeconds} s`);
      }
      pollOnce(this);
    },
    stop() {
      this.stopped = true;
      clearTimeout(this.timer);
      this.timer = null;
      this.request?.abort();
    },
  };
}

function stripQuery(url) {
  const parsed = new URL(url);
  return parsed.origin + parsed.pathname;
}

/** Raised for a poll response that arrived but cannot be used. */
class PollError extends Error {
  name = "PollError";
}

async function pollOnce(session) {
  const target = pollTarget(session);
  const startedAt = performance.now();
  const sentAtMs = wallClockMs();
  counters.requests += 1;
  counters.sent.overhead += requestHeadLength(target);
  renderCounters();
  let body;
  try {
    body = await fetchPoll(session, target);
  } catch (error) {
    if (!session.stopped) {
      handlePollFailure(session, target, error);
    }
    return;
  }
  if (session.stopped) {
    return;
  }
  if (state.status !== "open") {
    setStatus("open");
  }
  markPollBacklog(session, body, sentAtMs);
  reportRecovery(session);
  acceptPoll(body, wallClockMs());
  schedulePoll(session, nextPollDelay(session, body.events.length === 0, startedAt));
}

/**
 * Counts the events published before the poll request sent at `sentAtMs` as
 * replayed when that request followed a failed poll or reached a restarted
 * server. The server returns such a backlog at once from its history.
 * NOTE: this compares the server's clock with the page's, as latency does.
 */
function markPollBacklog(session, body, sentAtMs) {
  const restarted = position.epoch !== null && body.epoch !== position.epoch;
  if (session.failures > 0 || restarted) {
    counters.replay.beforeMs = Math.max(counters.replay.beforeMs, sentAtMs);
  }
}

// Returns the poll URL with the stream position and, for a long poll, the wait.
function pollTarget(session) {
  const target = new URL(session.url);
  target.searchParams.set("since", String(position.seq));
  if (position.epoch !== null) {
    target.searchParams.set("epoch", position.epoch);
  }
  if (session.waitSeconds !== null) {
    target.searchParams.set("wait", String(session.waitSeconds));
  }
  return target.href;
}

/**
 * Fetches one poll response and returns its parsed body.
 *
 * Raises PollError for an HTTP error status, a malformed body or no response
 * within the wait plus POLL_TIMEOUT_MARGIN_MS, a TypeError for a network error
 * or a blocked cross-origin response, and an AbortError when stopped.
 */
async function fetchPoll(session, target) {
  const controller = new AbortController();
  session.request = controller;
  const timeoutMs = (session.waitSeconds ?? 0) * 1000 + POLL_TIMEOUT_MARGIN_MS;
  const timer = setTimeout(() => {
    controller.abort(new PollError(`timed out after ${timeoutMs / 1000} s without a response`));
  }, timeoutMs);
  try {
    const headers = { Accept: "application/json" };
    const { token } = readCredentials();
    if (token !== "") {
      headers.Authorization = `Bearer ${token}`;
    }
    const response = await fetch(target, {
      cache: "no-store",
      headers,
      signal: controller.signal,
    });
    counters.received.overhead += responseHeadLength(response);
    const text = await response.text();
    if (!RESOURCE_TIMING) {
      counters.received.payload += utf8Length(text);
    }
    renderCounters();
    if (!response.ok) {
      throw new PollError(describeHttpError(response, text));
    }
    return parsePollBody(text);
  } finally {
    clearTimeout(timer);
    session.request = null;
  }
}

// Returns "HTTP <status> <reason>" with the server's message: the "message" of
// rtkit's JSON errors, or the start of any other body.
function describeHttpError(response, text) {
  let detail = text.trim().slice(0, 300);
  try {
    const body = JSON.parse(text);
    if (isObject(body) && typeof body.message === "string") {
      detail = body.message;
    }
  } catch {
    // Not JSON, so the text itself is the detail.
  }
  const status = `HTTP ${response.status} ${response.statusText}`.trim();
  return detail ? `${status}: ${detail}` : status;
}

function parsePollBody(text) {
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    throw new PollError(`invalid poll response, not JSON: ${abbreviate(text, MAX_LOGGED_MESSAGE_CHARS)}`);
  }
  if (!isObject(body) || !Array.isArray(body.events)) {
    throw new PollError(`invalid poll response: ${abbreviate(text, MAX_LOGGED_MESSAGE_CHARS)}`);
  }
  const problem = findSubscribedProblem(body, position.epoch, position.seq);
  if (problem !== null) {
    throw new PollError(`invalid poll response ${abbreviate(text, MAX_LOGGED_MESSAGE_CHARS)}: ${problem}`);
  }
  return body;
}

function handlePollFailure(session, target, error) {
  // fetch() rejects with a TypeError both for network errors and for
  // responses that CORS blocks. Only a cross-origin request can be blocked,
  // and retrying one cannot succeed, because rtkit never sends CORS headers.
  if (error instanceof TypeError && new URL(target).origin !== window.location.origin) {
    counters.errors += 1;
    renderCounters();
    session.stop();
    endSession(session);
    log("error", `poll request to ${target} failed: ${error.message}`);
    log("error", explainCrossOriginPoll(window.location, target));
    return;
  }
  let text;
  if (error instanceof PollError) {
    text = `poll failed: ${error.message}`;
  } else if (error instanceof TypeError) {
    text = `poll request to ${session.url} failed: ${error.message} (a network error: is the server running?)`;
  } else {
    text = `poll failed: ${error.name}: ${error.message}`;
  }
  setStatus("retrying");
  reportFailure(session, text);
  session.nextAt = performance.now() + RETRY_DELAY_MS;
  schedulePoll(session, RETRY_DELAY_MS);
}

/**
 * Returns the milliseconds until the next poll.
 *
 * Short polls start every interval, measured from the start of the previous
 * one, but never overlap. A long poll follows at once, unless it returned no
 * events long before its wait was over: rtkit does that while it shuts down,
 * and polling again at once would spin.
 */
function nextPollDelay(session, empty, startedAt) {
  const now = performance.now();
  if (session.waitSeconds !== null) {
    const returnedEarly = now - startedAt < (session.waitSeconds * 1000) / 2;
    return empty && returnedEarly ? RETRY_DELAY_MS : 0;
  }
  session.nextAt = Math.max(session.nextAt + session.intervalMs, now);
  return session.nextAt - now;
}

function schedulePoll(session, delayMs) {
  session.timer = setTimeout(() => {
    session.timer = null;
    pollOnce(session);
  }, delayMs);
}

// Event stream

/** Records a WebSocket "subscribed" message: the epoch and any missed events. */
function acceptSubscribed(message) {
  const problem = findSubscribedProblem(message, position.epoch, position.seq);
  if (problem !== null) {
    log("error", `invalid subscribed message ${quoteMessage(message)}: ${problem}`);
    return;
  }
  acceptEpoch(message.epoch);
  acceptReset(message);
  acceptMissed(message.missed);
  // The server sends the replay right after this message and only then
  // registers the subscription, so every event up to message.seq is a replay.
  counters.replay.epoch = message.epoch;
  counters.replay.seq = message.seq;
  if (message.seq > position.seq) {
    log(
      "system",
      `subscribed: the server replays seq ${position.seq + 1} to ${message.seq} ` +
        "from its history, then pushes new events",
    );
  } else {
    log("system", `subscribed after seq ${position.seq}: the server pushes new events`);
  }
  renderCounters();
}

/** Records one /poll response body received at `receivedAt` (ms since the Unix epoch). */
function acceptPoll(body, receivedAt) {
  acceptEpoch(body.epoch);
  acceptReset(body);
  acceptMissed(body.missed);
  if (body.events.length === 0) {
    counters.empty += 1;
  }
  acceptEvents(body.events, receivedAt);
}

/** Starts over from seq 0 when the server's epoch changed, which means it restarted. */
function acceptEpoch(epoch) {
  if (epoch === position.epoch) {
    return;
  }
  if (position.epoch === null) {
    log("system", `following epoch ${epoch} from seq ${position.seq}`);
  } else {
    log("system", `server restarted: new epoch ${epoch} (was ${position.epoch}), continuing from seq 0`);
    markStreamBreak(
      "restart",
      `The server restarted: new epoch ${epoch} (was ${position.epoch}). The events ` +
        "below are from its new run, which counts seq from 1 again.",
      `The server restarted: its epoch changed from ${position.epoch} to ${epoch}. ` +
        "Its seq numbers start again at 1, and events of the old run that this page " +
        "had not received are lost.",
    );
    position.seq = 0;
  }
  position.epoch = epoch;
  renderPosition();
}

/**
 * Starts over from seq 0 when the server marks its reply `reset`: the page's
 * seq is past the channel's latest event, because the server evicted the
 * channel and created it again, so the position no longer belongs to it.
 */
function acceptReset(message) {
  if (message.reset !== true) {
    return;
  }
  log("system", `position reset: seq ${position.seq} is past the channel's latest event, continuing from seq 0`);
  markStreamBreak(
    "reset",
    "The server reset this page's position: the channel was evicted and created again. " +
      "The events below are from its new stream.",
    `The server reset this page's position: seq ${position.seq} is past the channel's ` +
      "latest event, so the page follows the channel again from its first event.",
  );
  position.seq = 0;
  renderPosition();
}

// Events that fell out of the server's history are counted once, here, and
// the position jumps over them, so acceptEvents does not count the gap again.
function acceptMissed(missed) {
  if (missed > 0) {
    counters.missed += missed;
    log("error", `missed ${missed} events after seq ${position.seq}: they fell out of the server's history`);
    const text =
      `${countEvents(missed)} missed: seq ${position.seq + 1} to ${position.seq + missed} ` +
      "fell out of the server's history before this page received them.";
    markStreamBreak("missed", text, text, missed);
    position.seq += missed;
  }
}

function countEvents(count) {
  return count === 1 ? "1 event" : `${numberFormat.format(count)} events`;
}

/**
 * Records events received at `receivedAt`, skipping duplicates and counting
 * gaps in seq as missed events.
 */
function acceptEvents(events, receivedAt) {
  for (const event of events) {
    if (!isValidEvent(event)) {
      log("error", `invalid event: ${quoteMessage(event)}`);
      continue;
    }
    acceptEpoch(event.epoch);
    if (event.seq <= position.seq) {
      counters.duplicates += 1;
      continue;
    }
    const gap = event.seq - position.seq - 1;
    if (gap > 0) {
      counters.missed += gap;
      log("error", `missed ${gap} events: seq jumped from ${position.seq} to ${event.seq}`);
      const text = `${countEvents(gap)} missed: seq jumped from ${position.seq} to ${event.seq}.`;
      markStreamBreak("missed", text, text, gap);
    }
    position.seq = event.seq;
    counters.events += 1;
    const publishedMs = timestampMs(event.ts);
    const replayed = isReplayed(event, publishedMs);
    if (publishedMs === null) {
      log("error", describeInvalidTime(event));
      appendEventRow(event, receivedAt, null, replayed);
      continue;
    }
    const latencyMs = receivedAt - publishedMs;
    if (!replayed) {
      counters.latencies.push(latencyMs);
      if (counters.latencies.length > MAX_EVENT_ROWS) {
        counters.latencies.shift();
      }
    }
    appendEventRow(event, receivedAt, latencyMs, replayed);
  }
  renderPosition();
  renderCounters();
}

/**
 * Returns whether the server sent `event` from its history, as counters.replay
 * describes. Such an event waited there, so its latency is its age, not the
 * transport's delay. `publishedMs` is null when the event's ts is not a time.
 */
function isReplayed(event, publishedMs) {
  const { replay } = counters;
  if (event.epoch === replay.epoch && event.seq <= replay.seq) {
    return true;
  }
  return publishedMs !== null && publishedMs < replay.beforeMs;
}

// The event's ts is checked where it is used, by timestampMs(), so that an
// event with an invalid time is still shown and still moves the position.
function isValidEvent(event) {
  return (
    isObject(event) &&
    Number.isSafeInteger(event.seq) &&
    event.seq > 0 &&
    typeof event.epoch === "string" &&
    EPOCH_PATTERN.test(event.epoch)
  );
}

/**
 * Returns why the "epoch", "seq" and "missed" fields of `message`, a
 * "subscribed" message or a /poll response body, are invalid, or null when
 * they are valid.
 *
 * The page requested the events after `seq` of `epoch` (null before it knew
 * one). The server counts as missed only events after that seq that left its
 * history, so the sum cannot exceed the latest seq that the message reports.
 * Counts must be safe integers: beyond 2^53 − 1, seq + 1 === seq.
 */
function findSubscribedProblem(message, epoch, seq) {
  if (typeof message.epoch !== "string") {
    return `epoch is ${describeValue(message.epoch)}, expected a string`;
  }
  if (!EPOCH_PATTERN.test(message.epoch)) {
    return describeInvalidEpoch(message.epoch);
  }
  for (const name of ["seq", "missed"]) {
    if (!isCount(message[name])) {
      return (
        `${name} is ${describeValue(message[name])}, expected an integer ` +
        `from 0 to ${Number.MAX_SAFE_INTEGER}`
      );
    }
  }
  // A server in another epoch, or one that marks its reply reset, replays
  // from its first event.
  const sameStream = (epoch === null || epoch === message.epoch) && message.reset !== true;
  const since = sameStream ? seq : 0;
  if (message.missed > 0 && since + message.missed > message.seq) {
    return (
      `missed is ${message.missed} after seq ${since}, but the latest seq is ` +
      `${message.seq}, so at most ${Math.max(0, message.seq - since)} events can be missed`
    );
  }
  return null;
}

function describeInvalidEpoch(epoch) {
  const expected = "expected 1 to 64 letters, digits, _ and -";
  if (epoch.length > 64) {
    return `epoch is a string of ${numberFormat.format(epoch.length)} characters, ${expected}`;
  }
  return `epoch is ${JSON.stringify(epoch)}, ${expected}`;
}

/** Returns whether `value` is an integer from 0 to Number.MAX_SAFE_INTEGER. */
function isCount(value) {
  return Number.isSafeInteger(value) && value >= 0;
}

/**
 * The largest distance from the Unix epoch, in seconds, of a time that a Date
 * holds. Dates end 8.64e15 ms on either side of the epoch, so
 * new Date(8.64e15 + 1) is an Invalid Date, whose toISOString() throws.
 */
const MAX_TIMESTAMP_S = 8.64e12;

/**
 * Returns the event time `ts`, in seconds since the Unix epoch, in
 * milliseconds, or null when it is not a number that a Date can hold.
 */
function timestampMs(ts) {
  if (typeof ts !== "number" || !Number.isFinite(ts) || Math.abs(ts) > MAX_TIMESTAMP_S) {
    return null;
  }
  return ts * 1000;
}

function describeInvalidTime(event) {
  return (
    `invalid ts ${describeValue(event.ts)} in event seq ${event.seq}: expected ` +
    `seconds since the Unix epoch, from -${MAX_TIMESTAMP_S} to ${MAX_TIMESTAMP_S}`
  );
}

/**
 * Returns a value from the server as an error message shows it: numbers as
 * JavaScript prints them, so that Infinity stays visible, and others as JSON.
 */
function describeValue(value) {
  if (value === undefined) {
    return "missing";
  }
  if (typeof value === "number") {
    return String(value);
  }
  return JSON.stringify(value);
}

/**
 * Returns the wall-clock time in milliseconds since the Unix epoch, with the
 * sub-millisecond resolution of performance.now().
 *
 * NOTE: timeOrigin is fixed when the page loads, so after the system clock is
 * adjusted this drifts from Date.now() and from the server's time.time().
 */
function wallClockMs() {
  return performance.timeOrigin + performance.now();
}

// Bytes

const utf8 = new TextEncoder();

function utf8Length(text) {
  return utf8.encode(text).length;
}

/**
 * Returns the length of a WebSocket frame header for a payload of `length`
 * bytes (RFC 6455 section 5.2): 2 bytes, plus 2 or 8 for the extended length,
 * plus the 4-byte masking key that every client-to-server frame carries.
 */
function frameHeaderLength(length, masked) {
  let header = 2;
  if (length > 65535) {
    header += 8;
  } else if (length > 125) {
    header += 2;
  }
  return masked ? header + 4 : header;
}

// Returns the bytes of the request line and Host header of a GET of `url`.
// The browser adds more headers (User-Agent, Accept and others) that the page
// cannot see, so this is a lower bound of what it sends.
function requestHeadLength(url) {
  const target = new URL(url);
  return utf8Length(`GET ${target.pathname}${target.search} HTTP/1.1\r\nHost: ${target.host}\r\n\r\n`);
}

// Estimates the bytes of a response's status line and headers from what
// fetch() exposes. For same-origin responses that is every header except
// Set-Cookie, but with lower-case names and without the original order or
// repeated headers, which fetch() joins.
function responseHeadLength(response) {
  let length = utf8Length(`HTTP/1.1 ${response.status} ${response.statusText}\r\n\r\n`);
  for (const [name, value] of response.headers) {
    length += utf8Length(`${name}: ${value}\r\n`);
  }
  return length;
}

/**
 * Whether the browser reports Resource Timing entries. The page reads their
 * encodedBodySize, the body as received. It does not use transferSize, because
 * the Resource Timing standard counts the headers in it as a fixed 300 bytes
 * to hide their real size (Chromium 156 reports encodedBodySize + 300).
 */
const RESOURCE_TIMING =
  typeof PerformanceObserver !== "undefined" &&
  (PerformanceObserver.supportedEntryTypes ?? []).includes("resource");

/** Counts the body bytes of the current run's poll responses as the browser measured them. */
function observePollBodies() {
  if (!RESOURCE_TIMING) {
    return;
  }
  const observer = new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) {
      countPollBody(entry);
    }
    // The observer has seen every entry. The buffer has room for 250 entries
    // by default and stops recording when full, so it is cleared each time.
    performance.clearResourceTimings();
  });
  observer.observe({ type: "resource" });
}

function countPollBody(entry) {
  // Entries of an earlier run started before this one. An entry can arrive
  // after its session stopped, so the run's counters, not the session, decide.
  const thisRun = entry.startTime >= counters.startPerformanceMs;
  if (!thisRun || entry.initiatorType !== "fetch" || stripQuery(entry.name) !== counters.pollEndpoint) {
    return;
  }
  counters.received.payload += entry.encodedBodySize;
  renderCounters();
}

// Counters and the events table

function newCounters() {
  return {
    requests: 0,
    empty: 0,
    events: 0,
    missed: 0,
    duplicates: 0,
    errors: 0,
    /**
     * Bytes of poll bodies or WebSocket payloads, and of the HTTP heads or
     * frame headers around them.
     */
    received: { payload: 0, overhead: 0 },
    sent: { payload: 0, overhead: 0 },
    /** The poll URL without its query, once this run polls. */
    pollEndpoint: null,
    /** Latencies of the last MAX_EVENT_ROWS events not replayed from history, in milliseconds. */
    latencies: [],
    /** When this run started, on the performance.now() clock, which Resource Timing uses. */
    startPerformanceMs: performance.now(),
    /**
     * The events that the server replayed from its history. In push mode these
     * are the events of `epoch` up to `seq`, the latest seq that the last
     * "subscribed" message reported. In every mode they include the events
     * published before `beforeMs`, in ms since the Unix epoch, which is the
     * start of this run or of the last poll request after a failed poll or a restart.
     */
    replay: { epoch: null, seq: 0, beforeMs: wallClockMs() },
  };
}

function resetCounters() {
  counters = newCounters();
  ui.events.replaceChildren();
  ui.streamNotice.hidden = true;
  ui.streamNotice.textContent = "";
  renderCounters();
  renderBytesNote();
}

const numberFormat = new Intl.NumberFormat("en-US");

function setCounter(element, value, text = numberFormat.format(value)) {
  element.textContent = text;
  element.dataset.value = String(value);
}

/** Shows the counters of the current run. */
function renderCounters() {
  const poll = MODES[state.mode].endpoint === "poll";
  ui.requestsLabel.textContent = poll ? "HTTP requests" : "WebSocket connections";
  setCounter(ui.countRequests, counters.requests);
  if (poll) {
    setCounter(ui.countEmpty, counters.empty);
    ui.countEmpty.title = "";
  } else {
    setCounter(ui.countEmpty, "", "n/a");
    ui.countEmpty.title = "A pushed message always carries an event.";
  }
  setCounter(ui.countEvents, counters.events);
  setCounter(ui.countMissed, counters.missed);
  setCounter(ui.countDuplicates, counters.duplicates);
  setCounter(ui.countErrors, counters.errors);
  ui.latencySummary.textContent = describeLatencies(counters.latencies);

  const { received, sent } = counters;
  const format = (value) => numberFormat.format(value);
  setCounter(ui.bytesReceived, received.payload + received.overhead);
  setCounter(ui.bytesSent, sent.payload + sent.overhead);
  if (poll) {
    const measured = RESOURCE_TIMING ? "measured" : "counted from the text";
    ui.bytesReceivedDetail.textContent =
      `${format(received.payload)} body, ${measured} + ${format(received.overhead)} headers, estimated`;
    ui.bytesSent.textContent = `≥ ${format(sent.payload + sent.overhead)}`;
    ui.bytesSentDetail.textContent = "request lines and Host headers only";
  } else {
    ui.bytesReceivedDetail.textContent =
      `${format(received.payload)} payload + ${format(received.overhead)} frame headers, computed`;
    ui.bytesSentDetail.textContent =
      `${format(sent.payload)} payload + ${format(sent.overhead)} frame headers and masks`;
  }
}

function describeLatencies(latencies) {
  if (latencies.length === 0) {
    return "none yet";
  }
  const sorted = [...latencies].sort((a, b) => a - b);
  const median = sorted[Math.floor((sorted.length - 1) / 2)];
  const max = sorted[sorted.length - 1];
  return `${median.toFixed(1)} / ${max.toFixed(1)} ms`;
}

/** Explains, for the current mode, which byte counts the page measures and which it estimates. */
function renderBytesNote() {
  const mode = MODES[state.mode];
  if (!mode.follows) {
    ui.bytesNote.textContent = "";
    return;
  }
  if (mode.endpoint === "poll") {
    ui.bytesNote.textContent =
      "Bytes received: response bodies as the browser measured them (Resource Timing " +
      "encodedBodySize), plus status lines and headers estimated from the headers " +
      "fetch() exposes. Bytes sent: request lines and Host headers only, a lower " +
      "bound, because the page cannot see the other headers the browser adds. rtkit " +
      "closes the connection after each response, so every poll also opens a new TCP " +
      "connection, which no counter shows.";
    return;
  }
  let text =
    "Bytes: message payloads plus frame headers computed from each payload's length " +
    "(2, 4 or 10 bytes, and a 4-byte mask on frames the page sends), including the " +
    "page's heartbeat pings and the server's pongs. The page cannot see the opening " +
    "handshake or the WebSocket protocol's own ping, pong and close frames.";
  const extensions = state.session?.transport?.extensions() ?? "";
  if (extensions.includes("permessage-deflate")) {
    text +=
      " This connection uses permessage-deflate, so the payloads on the wire are " +
      "compressed and usually smaller than counted here.";
  }
  ui.bytesNote.textContent = text;
}

function renderPosition() {
  ui.epoch.textContent = position.epoch ?? "none yet";
  ui.lastSeq.textContent = String(position.seq);
}

/**
 * Marks a break in the event stream, a restart or missed events, with a row
 * in the events table where seq jumps and with the notice above the table.
 * `missed` is the number of missed events, 0 for a restart.
 */
function markStreamBreak(kind, rowText, noticeText, missed = 0) {
  const row = document.createElement("tr");
  row.className = `stream-marker stream-marker-${kind}`;
  row.dataset.marker = kind;
  row.dataset.missed = String(missed);
  const cell = document.createElement("td");
  cell.colSpan = 4;
  cell.textContent = rowText;
  row.append(cell);
  appendBounded(ui.events, row, MAX_EVENT_ROWS);

  const now = new Date();
  const time = document.createElement("time");
  time.className = "stream-notice-time";
  time.dateTime = now.toISOString();
  time.textContent = formatTime(now).slice(0, "hh:mm:ss".length);
  ui.streamNotice.replaceChildren(time, ` ${noticeText}`);
  ui.streamNotice.dataset.kind = kind;
  ui.streamNotice.hidden = false;
}

/**
 * Appends a row for an event. The table keeps the last MAX_EVENT_ROWS rows.
 * `latencyMs` is null for an event whose ts is not a valid time.
 */
function appendEventRow(event, receivedAt, latencyMs, replayed) {
  const row = document.createElement("tr");
  row.dataset.seq = String(event.seq);
  if (replayed) {
    row.className = "replayed";
    row.title =
      "Replayed from the server's history, because it was published before this " +
      "page subscribed or resumed polling. The latency summary leaves it out.";
  }
  const cells = [
    [String(event.seq), "numeric"],
    [formatTime(new Date(receivedAt)), "time"],
    [latencyMs === null ? "invalid time" : latencyMs.toFixed(1), "numeric latency"],
    [JSON.stringify(event.data) ?? "undefined", "data"],
  ];
  for (const [text, className] of cells) {
    const cell = document.createElement("td");
    cell.className = className;
    cell.textContent = text;
    row.append(cell);
  }
  if (latencyMs === null) {
    const latency = row.querySelector(".latency");
    latency.dataset.invalid = "true";
    latency.title = `The server sent ts ${describeValue(event.ts)}, which is not a time.`;
  }
  appendBounded(ui.events, row, MAX_EVENT_ROWS);
}

// Interval

/**
 * Returns the short-poll interval in seconds, or null after showing an error
 * naming the invalid value.
 */
function readInterval() {
  const raw = ui.interval.value;
  const text = raw.trim();
  const seconds = Number(text);
  const valid =
    /^(\d+(\.\d*)?|\.\d+)$/.test(text) && seconds >= MIN_INTERVAL_S && seconds <= MAX_INTERVAL_S;
  if (!valid) {
    ui.intervalError.textContent =
      `Invalid interval ${JSON.stringify(raw)}: enter seconds from ` +
      `${MIN_INTERVAL_S} to ${MAX_INTERVAL_S}, such as 1 or 0.5.`;
    // The error takes the place of the hint, so the controls below do not move
    // while the user clicks one of them.
    ui.intervalError.hidden = false;
    ui.intervalHint.hidden = true;
    ui.interval.setAttribute("aria-invalid", "true");
    return null;
  }
  ui.intervalError.hidden = true;
  ui.intervalHint.hidden = false;
  ui.intervalError.textContent = "";
  ui.interval.removeAttribute("aria-invalid");
  return seconds;
}

/** Restarts short polling with the interval in the field when it is valid and new. */
function applyInterval() {
  const seconds = readInterval();
  const session = state.session;
  if (seconds === null) {
    if (session !== null && session.intervalMs !== null) {
      ui.intervalError.textContent +=
        ` Polling continues every ${session.intervalMs / 1000} s.`;
    }
    return;
  }
  if (state.mode !== "short-poll") {
    return;
  }
  if (session === null) {
    // Start the polling that the invalid interval prevented.
    if (state.intervalRejected) {
      connect(ui.url.value.trim());
    }
    return;
  }
  if (session.intervalMs === seconds * 1000) {
    return;
  }
  session.stop();
  endSession(session);
  log("system", `interval changed to ${seconds} s: ${describeStop(session)}`);
  resetCounters();
  connect(ui.url.value.trim());
}

// Start

function init() {
  const ids = [
    "status", "url", "connect", "disconnect", "log", "message", "send", "interval",
    "events", "epoch",
  ];
  for (const id of ids) {
    ui[id] = document.getElementById(id);
  }
  const byId = (id) => document.getElementById(id);
  Object.assign(ui, {
    urlLabel: byId("url-label"),
    intervalField: byId("interval-field"),
    intervalError: byId("interval-error"),
    intervalHint: byId("interval-hint"),
    eventsPanel: byId("events-panel"),
    streamNotice: byId("stream-notice"),
    sendForm: byId("send-form"),
    lastSeq: byId("last-seq"),
    requestsLabel: byId("requests-label"),
    countRequests: byId("count-requests"),
    countEmpty: byId("count-empty"),
    countEvents: byId("count-events"),
    countMissed: byId("count-missed"),
    countDuplicates: byId("count-duplicates"),
    countErrors: byId("count-errors"),
    latencySummary: byId("latency-summary"),
    bytesReceived: byId("bytes-received"),
    bytesReceivedDetail: byId("bytes-received-detail"),
    bytesSent: byId("bytes-sent"),
    bytesSentDetail: byId("bytes-sent-detail"),
    bytesNote: byId("bytes-note"),
    modeInputs: [...document.querySelectorAll('input[name="mode"]')],
    chatPanel: byId("chat-panel"),
    chatName: byId("chat-name"),
    chatNameError: byId("chat-name-error"),
    chatChannel: byId("chat-channel"),
    chatChannelError: byId("chat-channel-error"),
    join: byId("join"),
    leave: byId("leave"),
    chatState: byId("chat-state"),
    chatMessages: byId("chat-messages"),
    presence: byId("presence"),
    presenceCount: byId("presence-count"),
    chatText: byId("chat-text"),
    chatSend: byId("chat-send"),
    chatError: byId("chat-error"),
    token: byId("token"),
    tokenVia: byId("token-via"),
    problem: byId("connection-problem"),
    reconnectBar: byId("reconnect-bar"),
    reconnectText: byId("reconnect-text"),
    reconnectNow: byId("reconnect-now"),
    heartbeat: byId("heartbeat"),
    reliabilityNote: byId("reliability-note"),
  });
  const settingErrors = readSettings(window.location);
  state.urls.websocket = deriveUrl(window.location);
  state.urls.poll = derivePollUrl(window.location);
  if (window.location.protocol === "file:") {
    byId("file-note").hidden = false;
  }

  for (const input of ui.modeInputs) {
    input.addEventListener("change", () => switchMode(input.value));
  }
  byId("mode-form").addEventListener("submit", (event) => {
    event.preventDefault();
    applyInterval();
  });
  ui.interval.addEventListener("change", applyInterval);
  byId("connection-form").addEventListener("submit", (event) => {
    event.preventDefault();
    connect(ui.url.value.trim());
  });
  ui.disconnect.addEventListener("click", disconnect);
  ui.reconnectNow.addEventListener("click", () => {
    if (state.session?.kind === "websocket") {
      reconnectNow(state.session);
    }
  });
  ui.sendForm.addEventListener("submit", (event) => {
    event.preventDefault();
    if (ui.message.value !== "" && send(ui.message.value)) {
      ui.message.value = "";
    }
  });
  byId("clear-log").addEventListener("click", () => {
    ui.log.replaceChildren();
  });
  byId("join-form").addEventListener("submit", (event) => {
    event.preventDefault();
    joinChannel();
  });
  ui.leave.addEventListener("click", leaveChannel);
  ui.chatName.addEventListener("input", () => setFieldError(ui.chatName, ui.chatNameError, null));
  ui.chatChannel.addEventListener("input", () =>
    setFieldError(ui.chatChannel, ui.chatChannelError, null),
  );
  byId("chat-send-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sendChatMessage();
  });

  for (const text of settingErrors) {
    log("error", text);
  }
  renderReliabilityNote();
  observePollBodies();
  renderPresence();
  renderMode();
  renderCounters();
  renderPosition();
  connect(ui.url.value);
}

// client.html inserts this script from the head, where it may run before the
// body is parsed.
if (document.readyState === "loading") {
  document.addEventListener("DOMContentLoaded", init, { once: true });
} else {
  init();
}
