// The cross-site WebSocket hijacking demo. This page plays a malicious site: it
// is served from one origin and opens a WebSocket to a target server on
// another, named by ?target=ws://host:port/ws. If the target accepts, the page
// subscribes to an events channel, joins a chat channel, sends one chat message,
// and shows everything it can read. If the target rejects the upgrade, the page
// explains what the browser lets it know, which is only close code 1006.
//
// hijack.html loads this file as a module; it writes text with textContent only.

const DEFAULT_EVENTS_CHANNEL = "events";
const DEFAULT_CHAT_CHANNEL = "lobby";
const HIJACKER_NAME = "hijacker";
const MAX_ROWS = 200;
/** How long the page waits for the target to open or reject the connection. */
const OPEN_TIMEOUT_MS = 10000;
/** How long the page waits for the target's HTTP response after a rejection. */
const PROBE_TIMEOUT_MS = 5000;

// Close code meanings from RFC 6455 section 7.4.1 and, for 1012 to 1014, the
// IANA WebSocket Close Code Number Registry.
const CLOSE_CODES = new Map([
  [1000, "normal closure"],
  [1001, "going away"],
  [1002, "protocol error"],
  [1003, "unsupported data"],
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

const elements = {
  verdict: document.getElementById("verdict"),
  pageOrigin: document.querySelector('[data-testid="page-origin"]'),
  form: document.getElementById("target-form"),
  target: document.getElementById("target"),
  disconnect: document.getElementById("disconnect"),
  explanation: document.getElementById("explanation"),
  diagnosis: document.getElementById("diagnosis"),
  eventsChannel: document.getElementById("events-channel"),
  chatChannel: document.getElementById("chat-channel"),
  eventCount: document.getElementById("count-events"),
  chatCount: document.getElementById("count-chat"),
  events: document.getElementById("events"),
  chat: document.getElementById("chat"),
  members: document.getElementById("members"),
  log: document.getElementById("log"),
};

const params = new URLSearchParams(location.search);
const channels = {
  events: params.get("channel") || DEFAULT_EVENTS_CHANNEL,
  chat: params.get("chat") || DEFAULT_CHAT_CHANNEL,
};

/** The open or opening WebSocket, or null. */
let socket = null;
/** Counts calls of attack(), so a late result of an earlier attempt is ignored. */
let attempt = 0;

function main() {
  elements.pageOrigin.textContent = location.origin;
  elements.eventsChannel.textContent = channels.events;
  elements.chatChannel.textContent = channels.chat;
  elements.form.addEventListener("submit", (event) => {
    event.preventDefault();
    const target = elements.target.value.trim();
    const address = new URL(location.href);
    address.searchParams.set("target", target);
    history.replaceState(null, "", address);
    attack(target);
  });
  elements.disconnect.addEventListener("click", () => {
    if (socket !== null) {
      socket.close(1000, "hijack demo stopped");
    }
  });
  const target = params.get("target");
  if (target) {
    elements.target.value = target;
    attack(target);
  }
}

// Connecting

/** Opens a WebSocket to `targetText` and reports what the target does. */
function attack(targetText) {
  attempt += 1;
  if (socket !== null) {
    const previous = socket;
    socket = null;
    previous.close(1000, "hijack demo restarted");
  }
  resetView();
  let url;
  try {
    url = parseTarget(targetText);
  } catch (error) {
    setVerdict("invalid", "invalid target");
    explain(error.message);
    return;
  }

  setVerdict("connecting", "connecting");
  explain(`Opening a WebSocket from ${location.origin} to ${url.href}.`);
  log("system", `connecting to ${url.href}`);
  if (isSameServer(url)) {
    log(
      "system",
      "This page is served by the target itself, so the target's Origin check " +
        "accepts it. Serve this page from another port to see a cross-site attempt.",
    );
  }

  const thisAttempt = attempt;
  let current = null;
  let opened = false;
  // The timer starts before the constructor, so that an exception thrown
  // after this point cannot leave the verdict on "connecting" for good.
  const openTimer = setTimeout(() => {
    if (opened || thisAttempt !== attempt) {
      return;
    }
    current?.close();
    socket = null;
    setVerdict("no-answer", "no answer");
    explain(
      `The target neither accepted nor rejected the connection within ` +
        `${OPEN_TIMEOUT_MS / 1000} s, so the page gave up.`,
    );
  }, OPEN_TIMEOUT_MS);

  try {
    current = new WebSocket(url);
  } catch (error) {
    // Chromium throws a SyntaxError for a URL with a fragment, which the URL
    // parser accepts, and other browsers may reject more URLs here.
    clearTimeout(openTimer);
    setVerdict("invalid", "invalid target");
    explain(
      `invalid target "${targetText}": the browser cannot open a WebSocket to it ` +
        `(${error.name}: ${error.message}). Enter a URL such as ws://127.0.0.1:8765/ws.`,
    );
    log("error", `new WebSocket() failed: ${error.name}: ${error.message}`);
    return;
  }
  socket = current;

  current.addEventListener("open", () => {
    if (socket !== current) {
      return;
    }
    opened = true;
    clearTimeout(openTimer);
    elements.disconnect.disabled = false;
    reportAccepted(url);
    sendAll(current);
  });
  current.addEventListener("message", (event) => {
    if (socket === current) {
      handleMessage(event.data);
    }
  });
  current.addEventListener("close", (event) => {
    clearTimeout(openTimer);
    if (socket !== current) {
      return;
    }
    socket = null;
    elements.disconnect.disabled = true;
    if (opened) {
      log("system", `closed: ${describeClose(event.code, event.reason)}`);
    } else {
      reportRejected(url, event);
    }
  });
}

/**
 * Returns `text` as a ws: or wss: URL.
 *
 * Throws an Error whose message names the value and the fix.
 */
function parseTarget(text) {
  const example = "ws://127.0.0.1:8765/ws";
  if (!text) {
    throw new Error(`missing target: enter a WebSocket URL such as ${example}`);
  }
  let url;
  try {
    url = new URL(text);
  } catch {
    throw new Error(`invalid target "${text}": enter a WebSocket URL such as ${example}`);
  }
  if (url.protocol !== "ws:" && url.protocol !== "wss:") {
    throw new Error(
      `invalid target "${text}": the scheme must be ws: or wss:, e.g. ${example}`,
    );
  }
  return url;
}

/** Sends the commands that a hijacking page would send once connected. */
function sendAll(current) {
  const commands = [
    { type: "subscribe", channel: channels.events, since: 0 },
    { type: "join", channel: channels.chat, name: HIJACKER_NAME, since: 0 },
    {
      type: "message",
      channel: channels.chat,
      text: `Sent by a page on ${location.origin}, which is not this server's origin.`,
    },
  ];
  for (const command of commands) {
    const text = JSON.stringify(command);
    current.send(text);
    log("sent", text);
  }
}

// Reporting

function reportAccepted(url) {
  setVerdict("accepted", "accepted");
  explain(
    `The target at ${url.host} accepted a WebSocket from this page's origin ` +
      `${location.origin}. This page subscribed to "${channels.events}", joined ` +
      `the chat channel "${channels.chat}" as "${HIJACKER_NAME}" and sent a ` +
      "message there: it reads and writes whatever the target offers to a " +
      "visitor's browser, including data behind the visitor's cookies. The " +
      "target should reject upgrades whose Origin header is not its own. rtkit " +
      "does so unless it was started with check_origin=False, or from the " +
      "command line with --no-origin-check.",
  );
}

/**
 * Reports a connection that closed before it opened. Browsers give the page
 * close code 1006 and hide the HTTP status, so the page sends a plain HTTP
 * request to the target, to tell a rejection from a port where nothing listens.
 */
async function reportRejected(url, event) {
  const thisAttempt = attempt;
  setVerdict("checking", "checking");
  explain(
    `The connection closed before it opened: ${describeClose(event.code, event.reason)}. ` +
      "The browser reports only this code to the page and hides the HTTP status " +
      "of a failed upgrade, so this page cannot read why.",
  );
  log("error", `closed before it opened: ${describeClose(event.code, event.reason)}`);
  const httpOrigin = `${url.protocol === "wss:" ? "https:" : "http:"}//${url.host}`;
  const running = await answersHttp(`${httpOrigin}/`);
  if (thisAttempt !== attempt) {
    return;
  }
  if (running) {
    setVerdict("rejected", "rejected");
    diagnose(
      `The target responds to HTTP at ${httpOrigin}, so it is running, and it ` +
        "rejected the WebSocket upgrade. Its Origin check probably did: this " +
        `page's origin ${location.origin} is not the target's, and rtkit answers ` +
        "such an upgrade with HTTP 403. The target server's log names the reason " +
        '(a warning starting "rejected WebSocket upgrade"), and the browser\'s ' +
        "developer console shows the 403, which scripts never see.",
    );
  } else {
    setVerdict("unreachable", "unreachable");
    diagnose(
      `Nothing responded to HTTP at ${httpOrigin}: the target server is probably ` +
        "not running, or the host or port is wrong.",
    );
  }
}

/**
 * Returns whether any HTTP server responds to `url`. A no-cors fetch resolves with
 * an opaque response whatever the status, and rejects only when no response
 * arrives, so it works across origins without CORS headers.
 */
async function answersHttp(url) {
  try {
    await fetch(url, {
      mode: "no-cors",
      cache: "no-store",
      signal: AbortSignal.timeout(PROBE_TIMEOUT_MS),
    });
    return true;
  } catch {
    return false;
  }
}

// Messages from the target

function handleMessage(data) {
  if (typeof data !== "string") {
    log("received", `binary message of ${data.size} bytes`);
    return;
  }
  let message = null;
  if (data.trimStart().startsWith("{")) {
    try {
      message = JSON.parse(data);
    } catch {
      message = null;
    }
  }
  if (message === null || typeof message !== "object") {
    log("received", data);
    return;
  }
  switch (message.type) {
    case "event":
      if (message.channel === channels.chat) {
        addChatMessage(message);
      } else {
        addEvent(message);
      }
      break;
    case "presence":
      if (message.channel === channels.chat) {
        showMembers(message.members);
      }
      log("received", data);
      break;
    case "error":
      log("error", `the target sent an error: ${message.message ?? data}`);
      break;
    default:
      log("received", data);
  }
}

function addEvent(message) {
  const item = document.createElement("li");
  item.dataset.seq = String(message.seq);
  item.textContent = `#${message.seq} ${message.channel}: ${JSON.stringify(message.data)}`;
  appendRow(elements.events, item);
  increment(elements.eventCount);
}

function addChatMessage(message) {
  const data = message.data ?? {};
  const sender = data.from?.name ?? "unknown";
  const item = document.createElement("li");
  item.dataset.sender = sender;
  item.textContent = `${sender}: ${data.text ?? JSON.stringify(data)}`;
  appendRow(elements.chat, item);
  increment(elements.chatCount);
}

function showMembers(members) {
  // A hostile target may send any JSON here, such as null entries.
  const names = Array.isArray(members)
    ? members.filter((member) => typeof member?.name === "string").map((member) => member.name)
    : [];
  elements.members.textContent = names.length ? names.join(", ") : "none";
  elements.members.dataset.count = String(names.length);
}

// Rendering

function resetView() {
  elements.diagnosis.hidden = true;
  elements.diagnosis.textContent = "";
  elements.disconnect.disabled = true;
  elements.events.replaceChildren();
  elements.chat.replaceChildren();
  elements.members.textContent = "none seen";
  delete elements.members.dataset.count;
  for (const counter of [elements.eventCount, elements.chatCount]) {
    counter.dataset.value = "0";
    counter.textContent = "0";
  }
}

function setVerdict(state, text) {
  elements.verdict.dataset.state = state;
  elements.verdict.textContent = text;
}

function explain(text) {
  elements.explanation.textContent = text;
}

function diagnose(text) {
  elements.diagnosis.textContent = text;
  elements.diagnosis.hidden = false;
}

function increment(counter) {
  const value = Number(counter.dataset.value) + 1;
  counter.dataset.value = String(value);
  counter.textContent = String(value);
}

function appendRow(list, item) {
  list.append(item);
  while (list.childElementCount > MAX_ROWS) {
    list.firstElementChild.remove();
  }
  list.scrollTop = list.scrollHeight;
}

/** Appends a line of `kind` (sent, received, system or error) to the log. */
function log(kind, text) {
  const item = document.createElement("li");
  item.className = `line line-${kind}`;
  item.dataset.kind = kind;
  const time = document.createElement("time");
  time.className = "line-time";
  time.textContent = new Date().toTimeString().slice(0, 8);
  const label = document.createElement("span");
  label.className = "line-kind";
  label.textContent = kind;
  const body = document.createElement("span");
  body.className = "line-text";
  body.textContent = text;
  item.append(time, label, body);
  appendRow(elements.log, item);
}

/** Returns a close code with its meaning, and the reason when there is one. */
function describeClose(code, reason) {
  const meaning = CLOSE_CODES.get(code) ?? "unassigned or application-defined";
  const text = `${code} (${meaning})`;
  return reason ? `${text}: ${reason}` : text;
}

// Compares host and port the way rtkit's origin check does, which treats
// localhost, 127.0.0.1 and ::1 as one host.
function isSameServer(url) {
  const defaultPort = (protocol) => (protocol === "wss:" || protocol === "https:" ? "443" : "80");
  const pagePort = location.port || defaultPort(location.protocol);
  const targetPort = url.port || defaultPort(url.protocol);
  const sameHost =
    location.hostname === url.hostname ||
    (LOOPBACK_HOSTS.has(location.hostname) && LOOPBACK_HOSTS.has(url.hostname));
  return sameHost && pagePort === targetPort;
}

main();
