// roomcast chat page: the interface of a chat built on the JavaScript client library
// (`roomcast-client`, served from /roomcast-client/). One RoomcastClient holds the page's
// WebSocket to the gateway that served the page (/ws); the library does everything about
// the connection: it reconnects with jittered backoff, rejoins every room with `since`,
// hands each message over once and in order, and resends unacknowledged messages with
// their idempotency key (`idem`), so the server publishes each once (docs/protocol.md).
// This file is the interface: rooms and tabs, lines, the member list, typing, banners.
//
// A fresh join asks for the room's recent history (`history`), shown above the "You joined"
// line, so someone entering a room sees the conversation they walked into. A message sent
// shows as a pending line until `room.send()` resolves (the message itself then takes its
// place) or rejects (the line says why); a line sent while disconnected waits, pending,
// until the library has rejoined the room and sent it. A resume that could not recover
// every message (`gap`) says that messages were missed.
// Typing: `room.typing()` while the user types (the library sends at most one a second);
// others' notices show under the messages and go 3 s after their last one, or with their
// message.
//
// Members: `joined` lists only the first page of a large room (its `memberCount` says how
// many there are, `membersNext` where the rest starts); "Show more members" asks for the
// next page (`room.fetchMembersPage`) and merges it in, each member once. Small rooms keep
// the list current with presence join/leave events. Large rooms get a `summary` instead
// (count, joins, leaves, at most every few seconds): the count stays current, the list
// cannot, so it says it may be out of date and offers to load it again from the start.
//
// jwt mode (docs/protocol.md, "Authentication"): open the page as `/#token=<jwt>`, optionally
// `&refresh=<url-encoded same-origin URL>`. The token is read from the fragment (never sent
// in a query string, never logged), removed from the address bar, and given to the client,
// which sends it as the first frame (`auth`) on every connection. With a refresh URL the
// client's `getToken` fetches a new token from it on `expiring` (and when the server
// refuses the token held); without one the page warns that the session ends. Without a
// token in the fragment the page is the anonymous chat it always was.
//
// Rule: text that comes from the network or the user is only ever put into the page with
// textContent / createTextNode, never innerHTML.

import { RoomcastClient, compareIds } from './roomcast-client/index.js';

const ROOM_RE = /^[A-Za-z0-9._:-]{1,64}$/;
const COLOR_RE = /^#[0-9a-fA-F]{6}$/;
const CONTROL_RE = /[\u0000-\u001f\u007f-\u009f]/;
const MAX_NAME_CHARS = 32;
const MAX_LINES_PER_ROOM = 1000; // DOM lines kept per room
const HISTORY_ON_JOIN = 50; // recent messages asked for on a fresh join
const TYPING_SHOW_MS = 3000; // a notice goes this long after its user's last `typing`
const STORE_NAME = 'roomcast.name';
const STORE_ROOMS = 'roomcast.rooms';
const STORE_CURRENT = 'roomcast.current';

const $ = (id) => document.getElementById(id);
const ui = {
  banner: $('banner'),
  identity: $('identity'),
  identityAs: $('identity-as'),
  identityName: $('identity-name'),
  nameField: $('name-field'),
  status: $('status'),
  node: $('node'),
  joinForm: $('join-form'),
  name: $('name'),
  room: $('room'),
  rooms: $('rooms'),
  roomTitle: $('room-title'),
  messages: $('messages'),
  hint: $('hint'),
  sendForm: $('send-form'),
  text: $('text'),
  send: $('send'),
  members: $('members'),
  memberCount: $('member-count'),
  membersNote: $('members-note'),
  membersMore: $('members-more'),
  membersReload: $('members-reload'),
  typing: $('typing'),
};

/**
 * One room of the page (a tab), joined or joining, or `failed`: refused, or removed by the
 * server; not joined again unless the user asks.
 * @typedef {{
 *   name: string, user: string, status: 'offline'|'joining'|'joined'|'failed',
 *   room: (import('./roomcast-client/index.js').Room|null), offs: Array<() => void>,
 *   lines: HTMLElement[], members: Map<string, Member>, memberCount: number,
 *   membersNext: (string|null), membersStale: boolean,
 *   membersLoading: (null|'more'|'reload'), membersError: (string|null), paging: Paging,
 *   unread: number, tab: HTMLElement, badge: HTMLElement,
 *   me: ({name: string, color: string, id: (string|null)}|null),
 *   typing: Map<string, {name: string, timer: number}>,
 *   historyAnchor: (HTMLElement|null), awaiting: Map<string, HTMLElement>
 * }} PageRoom
 * `user`: the display name asked for (anonymous mode). `status`: the tab's state, from the
 * library's `room.state`. `room`: the library's room once its first join resolved (null
 * before, and once the membership ended); `offs` remove the listeners on it.
 * `me`: who `joined` says we are. `typing`: who else is typing, by member key.
 * `historyAnchor`: the "You joined" line while the history of a fresh join arrives (it
 * goes above it). `awaiting`: acked sends' lines, by id, until the message itself arrives.
 * `members`: who we know is in the room, by member key (see memberKey). `memberCount`: the
 * room's count. `membersNext`: the cursor of the next page (null: none). `membersStale`: a
 * `summary` came, so joins and leaves are no longer in the list. `membersLoading`: a page
 * request in flight (at most one per room).
 */

/**
 * One member as the list shows it. `count`: connections sharing the key (anonymous mode:
 * one member per connection, and two connections may share a name).
 * @typedef {{name: string, color: string, id: (string|null), count: number}} Member
 */

/**
 * One paging of the member list: `joined`'s page and the pages after it, or a reload from
 * the start. Answers for another paging than the room's current one are ignored. `seen`:
 * entries per member key in the pages so far (a key on two pages is two connections).
 * `gone`: keys that left (notice) during the paging, so a page read before they left does
 * not list them again. `arrived`: members who joined (notice) during it, kept when a reload
 * replaces the list.
 * @typedef {{
 *   seen: Map<string, number>, gone: Set<string>,
 *   arrived: Map<string, {name: string, color: string, id: (string|null)}>
 * }} Paging
 */

const state = {
  /** @type {Map<string, PageRoom>} */ rooms: new Map(),
  /** @type {string|null} */ current: null,
  membersUnsupported: false, // the gateway does not know `members`: no paging
  tokenMode: false, // jwt mode: the token names the user, no display name needed
  /** @type {string|null} jwt mode: where a new token comes from */ refreshUrl: null,
  /** @type {number|null} when the token ends (Date.now() ms), from `expiring` until `refreshed` */
  expiresAt: null,
};

// ---------- token from the URL fragment ----------

/** Reads `#token=...&refresh=...` and removes both from the address bar. */
function readFragment() {
  const found = { token: null, refreshUrl: null };
  const hash = window.location.hash.replace(/^#/, '');
  if (hash === '') return found;
  let params;
  try {
    params = new URLSearchParams(hash);
  } catch (_) {
    return found;
  }
  const token = (params.get('token') || '').trim();
  const refresh = (params.get('refresh') || '').trim();
  if (!params.has('token') && !params.has('refresh')) return found;
  if (token !== '') found.token = token;
  if (refresh !== '') found.refreshUrl = sameOriginUrl(refresh);
  params.delete('token');
  params.delete('refresh');
  const rest = params.toString();
  try {
    const url = window.location.pathname + window.location.search + (rest ? `#${rest}` : '');
    window.history.replaceState(window.history.state, '', url);
  } catch (_) {
    // not allowed here (file://): the token stays in the address bar, nothing else changes.
  }
  return found;
}

/** The refresh URL, if it is http(s) on this page's origin (the request carries cookies). */
function sameOriginUrl(raw) {
  try {
    const url = new URL(raw, window.location.href);
    const web = url.protocol === 'http:' || url.protocol === 'https:';
    return web && url.origin === window.location.origin ? url.href : null;
  } catch (_) {
    return null;
  }
}

/** The client's `getToken`: a new token from the refresh URL, with the session's cookies. */
async function fetchToken() {
  try {
    const res = await fetch(state.refreshUrl, { credentials: 'same-origin', cache: 'no-store' });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const token = (await res.text()).trim();
    if (token === '') throw new Error('empty answer');
    return token;
  } catch (e) {
    // The token is not in `e`: only the status or the network error.
    const ends = state.expiresAt !== null ? `; it ends in ${secondsLeft()}` : '';
    showBanner('refresh', `Could not renew the session (${e.message})${ends}.`);
    throw e;
  }
}

function secondsLeft() {
  return `${Math.max(1, Math.round((state.expiresAt - Date.now()) / 1000))} s`;
}

// ---------- banner ----------

/** A message above the chat; `kind` is a data attribute for styling and tests. */
function showBanner(kind, text) {
  ui.banner.dataset.kind = kind;
  ui.banner.textContent = text;
  ui.banner.hidden = false;
}

function hideBanner(kind) {
  if (kind === undefined || ui.banner.dataset.kind === kind) {
    ui.banner.hidden = true;
    ui.banner.textContent = '';
    delete ui.banner.dataset.kind;
  }
}

/** The client stopped: the server refused who we are. Say so. */
function stopped(err) {
  if (err.closeCode === 4002) {
    showBanner('expired', 'Session expired: sign in again to keep chatting.');
    setStatus('stopped', 'session expired');
  } else if (err.code === 'forbidden') {
    showBanner('forbidden', 'Disconnected by the server: you are no longer allowed here.');
    setStatus('stopped', 'not authorized');
  } else if (err.code === 'unauthorized') {
    showBanner(
      'unauthorized',
      state.tokenMode
        ? `Not authorized: ${reason(err)}`
        : 'Not authorized: this chat needs a sign-in token (open it from your sign-in link).',
    );
    ui.identity.hidden = true; // not signed in after all
    setStatus('stopped', 'not authorized');
  } else {
    setStatus('stopped', `stopped (${err.code})`);
  }
}

/** The server's words in a library error (its message without the leading code). */
function reason(err) {
  const prefix = `${err.code}: `;
  return err.message.startsWith(prefix) ? err.message.slice(prefix.length) : err.message;
}

// ---------- identity (jwt mode) ----------

/** With a token the name field is not needed: the token's `name` claim is the name. */
function setTokenMode(on) {
  state.tokenMode = on;
  ui.nameField.hidden = on;
  ui.name.disabled = on;
  ui.identity.hidden = !on;
  ui.hint.textContent = on
    ? 'Pick a room, then press Join.'
    : 'Pick a display name and a room, then press Join.';
}

function showIdentity(name) {
  ui.identityName.textContent = name;
  ui.identityAs.hidden = false;
}

// ---------- storage ----------

function load(key) {
  try {
    return window.localStorage.getItem(key);
  } catch (_) {
    return null;
  }
}

function store(key, value) {
  try {
    if (value === null) window.localStorage.removeItem(key);
    else window.localStorage.setItem(key, value);
  } catch (_) {
    // storage disabled (private mode, file://): the page still works, it just forgets.
  }
}

function saveRooms() {
  const names = [...state.rooms.values()].filter((r) => r.status !== 'failed').map((r) => r.name);
  store(STORE_ROOMS, JSON.stringify(names));
  store(STORE_CURRENT, state.current);
}

// ---------- validation ----------

function validName(raw) {
  const name = raw.trim();
  if (name.length === 0) return { error: 'Choose a display name.' };
  if ([...name].length > MAX_NAME_CHARS) return { error: `A display name has at most ${MAX_NAME_CHARS} characters.` };
  if (CONTROL_RE.test(name)) return { error: 'A display name cannot contain control characters.' };
  return { name };
}

function validRoom(raw) {
  const room = raw.trim();
  if (!ROOM_RE.test(room)) return { error: 'A room name is 1 to 64 letters, digits, or . _ : -' };
  return { room };
}

function safeColor(c) {
  return typeof c === 'string' && COLOR_RE.test(c) ? c : '#64748b';
}

// ---------- the connection (the library's) ----------

function wsUrl() {
  const scheme = window.location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${window.location.host}/ws`;
}

function setStatus(kind, text) {
  ui.status.dataset.state = kind;
  ui.status.textContent = text;
}

function describeClose(code) {
  if (code === undefined) return 'cannot connect';
  return code === 1001 ? 'node draining' : `closed ${code}`;
}

/** Every change of the client's state: the status line, the node, the rooms' tabs. */
function onClientState(s, change) {
  if (s === 'connected') {
    setStatus('connected', 'connected');
    ui.node.textContent = change.node || '?';
    hideBanner('refresh');
  } else {
    ui.node.textContent = '–';
    if (s === 'closed') {
      if (change.error) stopped(change.error);
    } else if (change.retryInMs !== undefined) {
      const wait = (change.retryInMs / 1000).toFixed(1);
      setStatus('reconnecting', `disconnected (${describeClose(change.closeCode)}), reconnecting in ${wait} s`);
    } else {
      setStatus('connecting', 'connecting…');
    }
    for (const r of state.rooms.values()) {
      r.historyAnchor = null;
      // A page request in flight fails with the connection; the rejoin brings a fresh list.
      r.membersLoading = null;
      r.paging = newPaging();
      clearTyping(r);
    }
    renderTyping();
  }
  // (The current room's member list shows or hides with its tab state.)
  for (const r of state.rooms.values()) syncRoomStatus(r);
}

function onClientError(err, source) {
  if (source === 'getToken') return; // fetchToken said so already
  if (source === 'auth' && err.code === 'bad_request') {
    // A gateway in anonymous mode: no token is needed, so a display name is.
    setTokenMode(false);
    showBanner('info', 'This gateway does not use sign-in tokens: pick a display name.');
    return;
  }
  if (source === 'refresh') {
    showBanner('refresh', `Could not renew the session: ${reason(err)}`);
    return;
  }
  systemLine(null, 'error', `error (${err.code}): ${reason(err)}`);
}

function onExpiring({ inMs }) {
  state.expiresAt = Date.now() + inMs;
  if (state.refreshUrl === null) {
    showBanner('refresh', `Your session ends in ${secondsLeft()}: sign in again to keep chatting.`);
  }
}

function onRefreshed({ exp }) {
  state.expiresAt = null;
  hideBanner('refresh');
  if (Number.isFinite(exp) && exp > 0) {
    ui.status.title = `session valid until ${new Date(exp * 1000).toLocaleString()}`;
  }
}

// ---------- rooms ----------

function addRoom(name, user, select) {
  let r = state.rooms.get(name);
  if (!r) {
    r = {
      name,
      user,
      status: 'offline',
      room: null,
      offs: [],
      lines: [],
      members: new Map(),
      memberCount: 0,
      membersNext: null,
      membersStale: false,
      membersLoading: null,
      membersError: null,
      paging: newPaging(),
      unread: 0,
      tab: null,
      badge: null,
      me: null,
      typing: new Map(),
      historyAnchor: null,
      awaiting: new Map(),
    };
    state.rooms.set(name, r);
    buildTab(r);
    startJoin(r);
  } else if (r.status === 'failed') {
    r.user = user;
    startJoin(r);
  }
  if (select || state.current === null) selectRoom(name);
  saveRooms();
  return r;
}

/** Asks the client to join `r` (now, or once connected); the room's events go to the page. */
function startJoin(r) {
  const options = { history: HISTORY_ON_JOIN };
  // jwt mode ignores the name (the token names the user); anonymous mode needs it.
  if (r.user) options.displayName = r.user;
  const joining = client.join(r.name, options);
  setRoomStatus(r, libraryStatus(r.name));
  joining.then(
    (room) => {
      if (state.rooms.get(r.name) !== r) return; // left meanwhile
      r.room = room;
      // The first join's events (`joined`, the history) are held for listeners added now.
      r.offs = [
        room.on('joined', (e) => onJoined(r, e)),
        room.on('message', (m) => onMessage(r, m)),
        room.on('presence', (p) => onPresence(r, p)),
        room.on('typing', (t) => onTyping(r, t)),
        room.on('gap', () => systemLine(r, 'missed', 'some messages may have been missed')),
        room.on('left', (e) => onLeft(r, e)),
      ];
    },
    (err) => {
      if (state.rooms.get(r.name) !== r) return;
      if (client.state === 'closed') {
        syncRoomStatus(r); // the client stopped: its banner says why
        return;
      }
      systemLine(r, 'error', `could not join ${r.name}: ${reason(err)}`);
      setRoomStatus(r, 'failed');
      saveRooms();
    },
  );
}

/** Stops listening to the library's room of `r` (the membership ended). */
function detach(r) {
  for (const off of r.offs) off();
  r.offs = [];
  r.room = null;
}

function leaveRoom(name) {
  const r = state.rooms.get(name);
  if (!r) return;
  detach(r);
  state.rooms.delete(name);
  // Joined or joining (a refused or removed room is no longer the client's). Its pending
  // sends fail with it; their lines go with the tab.
  void client.room(name)?.leave();
  clearTyping(r);
  r.tab.parentElement.remove();
  if (state.current === name) {
    const next = state.rooms.keys().next();
    state.current = null;
    selectRoom(next.done ? null : next.value);
  }
  saveRooms();
}

function buildTab(r) {
  const li = document.createElement('li');
  const tab = document.createElement('button');
  tab.type = 'button';
  tab.className = 'room-tab';
  tab.dataset.room = r.name;
  tab.dataset.state = r.status;
  const label = document.createElement('span');
  label.className = 'room-name';
  label.textContent = r.name;
  const badge = document.createElement('span');
  badge.className = 'badge';
  badge.hidden = true;
  tab.append(label, badge);
  tab.addEventListener('click', () => selectRoom(r.name));

  const close = document.createElement('button');
  close.type = 'button';
  close.className = 'room-leave';
  close.dataset.room = r.name;
  close.setAttribute('aria-label', `Leave ${r.name}`);
  close.title = `Leave ${r.name}`;
  close.textContent = '×';
  close.addEventListener('click', () => leaveRoom(r.name));

  li.append(tab, close);
  ui.rooms.append(li);
  r.tab = tab;
  r.badge = badge;
}

/** Where the client's room `name` stands, as a tab state. */
function libraryStatus(name) {
  const s = client.room(name)?.state;
  return s === 'joined' || s === 'joining' ? s : 'offline';
}

function syncRoomStatus(r) {
  if (r.status !== 'failed') setRoomStatus(r, libraryStatus(r.name));
}

/** Shows the tab in state `s`; the current room's composer and member list follow it. */
function setRoomStatus(r, s) {
  r.status = s;
  r.tab.dataset.state = s;
  r.tab.title = `${r.name}: ${s}`;
  if (r.name === state.current) {
    updateComposer();
    renderMembers();
  }
}

function selectRoom(name) {
  state.current = name;
  const r = name === null ? null : state.rooms.get(name);
  for (const x of state.rooms.values()) {
    if (x === r) x.tab.setAttribute('aria-current', 'true');
    else x.tab.removeAttribute('aria-current');
  }
  if (r) {
    r.unread = 0;
    updateBadge(r);
    ui.roomTitle.textContent = `# ${r.name}`;
    ui.messages.replaceChildren(...r.lines);
    ui.messages.scrollTop = ui.messages.scrollHeight;
    ui.hint.hidden = true;
  } else {
    ui.roomTitle.textContent = 'No room joined';
    ui.messages.replaceChildren();
    ui.hint.hidden = false;
  }
  renderMembers();
  renderTyping();
  updateComposer();
  store(STORE_CURRENT, name);
}

function updateComposer() {
  const has = state.current !== null;
  ui.text.disabled = !has;
  ui.send.disabled = !has;
}

function updateBadge(r) {
  r.badge.hidden = r.unread === 0;
  r.badge.textContent = r.unread > 99 ? '99+' : String(r.unread);
  r.badge.setAttribute('aria-label', `${r.unread} unread`);
}

// ---------- lines ----------

function appendLine(r, node) {
  const isCurrent = r.name === state.current;
  const box = ui.messages;
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  r.lines.push(node);
  if (r.lines.length > MAX_LINES_PER_ROOM) {
    const old = r.lines.shift();
    if (isCurrent) old.remove();
  }
  if (isCurrent) {
    box.append(node);
    if (atBottom) box.scrollTop = box.scrollHeight;
  }
}

/** Puts `node` just above `anchor` (a line of `r`), or at the end if `anchor` is gone. */
function insertLineBefore(r, node, anchor) {
  const i = r.lines.indexOf(anchor);
  if (i < 0) {
    appendLine(r, node);
    return;
  }
  const isCurrent = r.name === state.current;
  const box = ui.messages;
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  r.lines.splice(i, 0, node);
  if (r.lines.length > MAX_LINES_PER_ROOM) {
    const old = r.lines.shift();
    if (isCurrent) old.remove();
  }
  if (isCurrent && anchor.parentNode === box) {
    anchor.before(node);
    if (atBottom) box.scrollTop = box.scrollHeight;
  }
}

function removeLine(r, node) {
  const i = r.lines.indexOf(node);
  if (i >= 0) r.lines.splice(i, 1);
  node.remove();
}

function timeEl(ts) {
  const t = document.createElement('time');
  t.className = 'ts';
  const d = new Date(Number.isFinite(ts) ? ts : Date.now());
  t.dateTime = d.toISOString();
  t.textContent = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  t.title = d.toLocaleString();
  return t;
}

/** A system line (joins, leaves, errors, missed messages); `kind` is a data attribute for styling and tests. */
function systemLine(r, kind, text) {
  const line = document.createElement('div');
  line.className = `sys sys-${kind}`;
  line.dataset.kind = kind;
  const body = document.createElement('span');
  body.className = 'sys-text';
  body.textContent = text;
  line.append(timeEl(Date.now()), body);
  const target = r || currentRoom();
  if (target) appendLine(target, line);
  else showHint(text);
}

function showHint(text) {
  ui.hint.textContent = text;
  ui.hint.hidden = false;
}

/** A message of the library (`{ id, from, text, ts, replay }`) as a line. */
function messageLine(msg) {
  const line = document.createElement('div');
  line.className = msg.replay ? 'msg replay' : 'msg';
  line.dataset.id = msg.id;
  if (msg.replay) line.dataset.replay = 'true';
  const from = document.createElement('span');
  from.className = 'from';
  from.textContent = msg.from.name;
  from.style.color = safeColor(msg.from.color);
  const text = document.createElement('span');
  text.className = 'text';
  text.textContent = msg.text;
  line.append(timeEl(msg.ts), from, text);
  return line;
}

// ---------- members ----------

/** A user of the library, with `id` null when it has none (anonymous mode). */
function user(u) {
  return { name: u.name, color: u.color, id: u.id ?? null };
}

/** Who a member is: the user id in jwt mode (two users may share a name), else the name. */
function memberKey(m) {
  return m.id !== null ? `id:${m.id}` : `name:${m.name}`;
}

function newPaging() {
  return { seen: new Map(), gone: new Set(), arrived: new Map() };
}

function currentRoom() {
  return state.current === null ? null : state.rooms.get(state.current) || null;
}

/** Adds one connection of `u` to the list (a user with an id is listed once, however many). */
function addMember(r, u) {
  const key = memberKey(u);
  const e = r.members.get(key);
  if (e) e.count = u.id !== null ? 1 : e.count + 1;
  else r.members.set(key, { name: u.name, color: u.color, id: u.id, count: 1 });
}

/**
 * Merges one page of the current paging into the list, each member once: a key already
 * listed (from an earlier page or a join notice) keeps its entry, and counts as many
 * connections as the pages so far show for it. With `replace`, the page starts the list
 * afresh (a reload), keeping who joined while it loaded.
 */
function mergeMembers(r, list, replace) {
  const paging = r.paging;
  if (replace) {
    r.members = new Map();
  }
  for (const raw of list) {
    const u = user(raw);
    const key = memberKey(u);
    const seen = (paging.seen.get(key) || 0) + 1;
    paging.seen.set(key, seen);
    const e = r.members.get(key);
    if (e) {
      e.count = u.id !== null ? 1 : Math.max(e.count, seen);
    } else if (!paging.gone.has(key)) {
      r.members.set(key, { name: u.name, color: u.color, id: u.id, count: 1 });
    }
  }
  if (replace) {
    for (const u of paging.arrived.values()) {
      if (!r.members.has(memberKey(u))) addMember(r, u);
    }
  }
  // We are in the room even when our entry is on a page not loaded yet.
  if (r.me !== null && !r.members.has(memberKey(r.me))) addMember(r, r.me);
}

/** Connections listed (what `memberCount` counts: users, or anonymous connections). */
function listedCount(r) {
  let n = 0;
  for (const m of r.members.values()) n += m.count;
  return n;
}

/**
 * Asks for the next page of the member list, or (`fresh`) for the first page of a new
 * paging that replaces the list. One request per room at a time.
 */
function requestMembers(r, fresh) {
  if (state.membersUnsupported || r.status !== 'joined' || r.room === null || r.membersLoading !== null) return;
  if (!fresh && r.membersNext === null) return;
  const wasStale = r.membersStale;
  if (fresh) {
    r.paging = newPaging();
    // Joins and leaves from now on are in the new paging (or come as notices).
    r.membersStale = false;
  }
  const paging = r.paging;
  r.membersLoading = fresh ? 'reload' : 'more';
  r.membersError = null;
  if (r === currentRoom()) renderMembersInfo();
  // An answer for another paging (a rejoin, a disconnect, a room left) is dropped.
  const current = () => state.rooms.get(r.name) === r && r.paging === paging;
  r.room.fetchMembersPage(fresh ? undefined : r.membersNext).then(
    (page) => {
      if (!current() || r.status !== 'joined') return;
      r.membersLoading = null;
      mergeMembers(r, page.members, fresh);
      r.memberCount = page.memberCount;
      r.membersNext = page.next ?? null;
      if (r === currentRoom()) renderMembers();
    },
    (err) => {
      if (!current()) return;
      r.membersLoading = null;
      if (fresh && wasStale) r.membersStale = true; // the old list stays, as stale as before
      if (err.code === 'unknown_type') {
        state.membersUnsupported = true; // an older gateway: the first page is all there is
      } else if (err.code !== 'not_joined') {
        // (`not_joined`: removed or left meanwhile; `left`, or the rejoin, says the rest.)
        r.membersError = `could not load members (${err.code})`;
      }
      if (r === currentRoom()) renderMembersInfo();
    },
  );
}

function renderMembers() {
  const r = currentRoom();
  const items = r && r.status === 'joined'
    ? [...r.members.entries()]
      .sort(([ka, a], [kb, b]) => a.name.localeCompare(b.name) || (ka < kb ? -1 : ka > kb ? 1 : 0))
      .map(([, m]) => m)
    : [];
  ui.members.replaceChildren(
    ...items.map(({ name, id, color, count }) => {
      const li = document.createElement('li');
      li.className = 'member';
      li.dataset.name = name;
      if (id !== null) {
        li.dataset.id = id;
        li.title = id;
      }
      li.dataset.count = String(count);
      const n = document.createElement('span');
      n.className = 'member-name';
      n.style.color = safeColor(color);
      n.textContent = name;
      li.append(n);
      if (count > 1) {
        const c = document.createElement('span');
        c.className = 'member-count';
        c.textContent = `×${count}`;
        c.title = `${count} connections`;
        li.append(c);
      }
      return li;
    }),
  );
  renderMembersInfo();
}

/** The count, the note under it (partial, out of date) and the paging buttons. */
function renderMembersInfo() {
  const r = currentRoom();
  const focused = document.activeElement;
  if (!r || r.status !== 'joined') {
    ui.memberCount.textContent = '';
    delete ui.memberCount.dataset.count;
    ui.membersNote.hidden = true;
    ui.membersNote.textContent = '';
    delete ui.membersNote.dataset.state;
    ui.membersMore.hidden = true;
    ui.membersReload.hidden = true;
    ui.members.removeAttribute('aria-busy');
  } else {
    const listed = listedCount(r);
    const count = r.memberCount;
    const paging = !state.membersUnsupported;
    const more = paging && r.membersNext !== null;
    const short = listed < count;
    const reload = paging && (r.membersStale || (!more && short));
    ui.memberCount.textContent = `(${count.toLocaleString()})`;
    ui.memberCount.dataset.count = String(count);
    let note = '';
    let kind = '';
    if (r.membersStale) {
      kind = 'stale';
      note = `${count.toLocaleString()} ${count === 1 ? 'member' : 'members'} — showing ${listed.toLocaleString()}; the list may be out of date`;
    } else if (more || short) {
      kind = 'partial';
      note = `Showing ${listed.toLocaleString()} of ${count.toLocaleString()}`;
    }
    if (r.membersError !== null) {
      kind = kind || 'error';
      note = note ? `${note} · ${r.membersError}` : r.membersError;
    }
    ui.membersNote.hidden = note === '';
    if (ui.membersNote.textContent !== note) ui.membersNote.textContent = note;
    if (kind) ui.membersNote.dataset.state = kind;
    else delete ui.membersNote.dataset.state;
    const loading = r.membersLoading;
    ui.members.setAttribute('aria-busy', loading !== null ? 'true' : 'false');
    ui.membersMore.hidden = !more;
    ui.membersMore.disabled = loading !== null;
    ui.membersMore.textContent = loading === 'more' ? 'Loading members…' : 'Show more members';
    ui.membersReload.hidden = !reload;
    ui.membersReload.disabled = loading !== null;
    ui.membersReload.textContent = loading === 'reload' ? 'Reloading members…' : 'Reload member list';
  }
  // A button that went away (the last page came) leaves the focus on the list, not nowhere.
  if ((focused === ui.membersMore || focused === ui.membersReload) && focused.hidden) ui.members.focus();
}

// ---------- typing ----------

function clearTyping(r) {
  for (const t of r.typing.values()) clearTimeout(t.timer);
  r.typing.clear();
}

/** `u` stopped typing (their message arrived, they left). */
function stopTyping(r, u) {
  const key = memberKey(u);
  const t = r.typing.get(key);
  if (!t) return;
  clearTimeout(t.timer);
  r.typing.delete(key);
  if (r.name === state.current) renderTyping();
}

/** "bob is typing…", "bob and carol are typing…" for the current room (empty: nobody). */
function renderTyping() {
  const r = currentRoom();
  const names = r && r.status === 'joined'
    ? [...r.typing.values()].map((t) => t.name).sort((a, b) => a.localeCompare(b))
    : [];
  let text = '';
  if (names.length === 1) text = `${names[0]} is typing…`;
  else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
  else if (names.length === 3) text = `${names[0]}, ${names[1]} and ${names[2]} are typing…`;
  else if (names.length > 3) text = `${names.length} people are typing…`;
  // The live region stays in the page (empty when nobody types), so that screen readers
  // announce each change; only its text changes.
  if (ui.typing.textContent !== text) ui.typing.textContent = text;
}

// ---------- sending ----------

/** Our own message while it is not acked: `data-state` pending, sent, rejected or failed. */
function outgoingLine(r, text) {
  const me = r.me || { name: r.user || 'you', color: '' };
  const line = document.createElement('div');
  line.className = 'outgoing';
  line.dataset.state = 'pending';
  const from = document.createElement('span');
  from.className = 'from';
  from.textContent = me.name;
  from.style.color = safeColor(me.color);
  const body = document.createElement('span');
  body.className = 'text';
  body.textContent = text;
  const note = document.createElement('span');
  note.className = 'send-state';
  note.textContent = 'sending…';
  line.append(timeEl(Date.now()), from, body, note);
  return line;
}

function setOutgoingState(line, s, note) {
  line.dataset.state = s;
  line.querySelector('.send-state').textContent = note;
}

/**
 * Sends `text` through the library (which keeps it, with its idempotency key, until it is
 * acked, across reconnects), shown as a pending line until then.
 */
function sendMessage(r, room, text) {
  const line = outgoingLine(r, text);
  appendLine(r, line);
  room.send(text).then(
    ({ id }) => {
      if (state.rooms.get(r.name) !== r) return;
      // `duplicate`: an earlier copy was published after all; the id is that copy's.
      const cursor = room.lastMessageId;
      if (cursor !== null && compareIds(id, cursor) <= 0) {
        removeLine(r, line); // the message itself was delivered already
      } else {
        // The line stands in for the message until it arrives (in its place among the others).
        setOutgoingState(line, 'sent', '');
        line.dataset.id = id;
        r.awaiting.set(id, line);
      }
    },
    (err) => {
      if (state.rooms.get(r.name) !== r) return;
      if (err.code === 'rejected') {
        // The publish hook refused it: the message says why.
        setOutgoingState(line, 'rejected', `not sent: ${reason(err)}`);
      } else if (err.code === 'not_joined' && r.status === 'failed') {
        setOutgoingState(line, 'failed', 'not sent: you are no longer in this room');
      } else {
        const why = reason(err);
        setOutgoingState(line, 'failed', `not sent (${err.code})${why !== err.code ? `: ${why}` : ''}`);
      }
    },
  );
}

// ---------- room events (the library's) ----------

/** The room was joined: the first time, or again after a reconnect (`resumed`). */
function onJoined(r, e) {
  const me = user(e.you);
  r.me = me;
  // The first page of the members (the rest by `fetchMembersPage`): a new paging, a fresh list.
  r.paging = newPaging();
  r.membersLoading = null;
  r.membersError = null;
  r.membersStale = false;
  mergeMembers(r, e.members, true);
  r.memberCount = e.memberCount;
  r.membersNext = e.membersNext;
  if (me.id !== null) showIdentity(me.name);
  if (!e.resumed) {
    systemLine(r, 'joined', `You joined ${r.name} as ${me.name}`);
    // The history of a fresh join follows: it goes above this line.
    r.historyAnchor = r.lines[r.lines.length - 1] || null;
  }
  syncRoomStatus(r); // renders the member list if current
  if (r.name === state.current) renderTyping();
}

function onMessage(r, m) {
  // Replays come right after `joined`, before anything live: once something live
  // arrives, the history of the join is complete.
  if (!m.replay) r.historyAnchor = null;
  // Our own message: its line makes way for it.
  const mine = r.awaiting.get(m.id);
  if (mine) {
    r.awaiting.delete(m.id);
    removeLine(r, mine);
  }
  const line = messageLine(m);
  const history = m.replay && r.historyAnchor !== null;
  if (history) insertLineBefore(r, line, r.historyAnchor);
  else appendLine(r, line);
  if (!m.replay) stopTyping(r, user(m.from)); // their message is here: no longer "typing"
  if (r.name !== state.current && !history) {
    r.unread += 1;
    updateBadge(r);
  }
}

function onTyping(r, e) {
  const u = user(e.user);
  // Never ourselves (another tab of ours, or a server that echoes).
  if (r.me !== null && memberKey(u) === memberKey(r.me)) return;
  const key = memberKey(u);
  const prev = r.typing.get(key);
  if (prev) clearTimeout(prev.timer);
  const timer = setTimeout(() => {
    if (r.typing.get(key)?.timer !== timer) return;
    r.typing.delete(key);
    if (r.name === state.current) renderTyping();
  }, TYPING_SHOW_MS);
  r.typing.set(key, { name: u.name, timer });
  if (r.name === state.current) renderTyping();
}

/** The membership ended: removed by the server, or a rejoin refused. Say so; not rejoined. */
function onLeft(r, e) {
  if (e.reason === 'left') return; // our own leave: the tab went with it
  const text = e.reason === 'removed'
    ? `You were removed from ${r.name}`
    : `You are no longer in ${r.name} (${e.reason})`;
  detach(r);
  r.members = new Map();
  r.memberCount = 0;
  r.membersNext = null;
  r.membersStale = false;
  r.membersLoading = null;
  r.membersError = null;
  r.paging = newPaging(); // a late page of the old paging finds no list to fill
  r.historyAnchor = null;
  clearTyping(r);
  systemLine(r, 'removed', text);
  // `failed`: not rejoined on reconnect nor on reload; joining it again is up to the user.
  setRoomStatus(r, 'failed');
  saveRooms();
  showBanner('removed', text);
  if (r.name === state.current) renderTyping();
}

/**
 * Small rooms: a notice per join or leave, which keeps the list current and gets a line.
 * Large rooms: a `summary` now and then, which keeps the count current but not the list
 * (no line for it: in a busy room that would be all the chat shows).
 */
function onPresence(r, p) {
  r.historyAnchor = null;
  r.memberCount = p.memberCount;
  if (p.event === 'summary') {
    r.membersStale = true;
    if (r.name === state.current) renderMembersInfo();
    return;
  }
  const u = user(p.user);
  const key = memberKey(u);
  if (p.event === 'join') {
    addMember(r, u);
    r.paging.gone.delete(key);
    r.paging.arrived.set(key, u);
    systemLine(r, 'presence', `${u.name} joined`);
  } else {
    const e = r.members.get(key);
    if (e && e.count > 1 && u.id === null) {
      e.count -= 1;
    } else {
      r.members.delete(key);
      r.paging.gone.add(key);
      r.paging.arrived.delete(key);
    }
    systemLine(r, 'presence', `${u.name} left`);
    // In jwt mode `leave` means the user's last connection: no one is typing any more.
    // In anonymous mode another connection may share the name; it types again if it does.
    stopTyping(r, u);
  }
  if (r.name === state.current) renderMembers();
}

// ---------- user actions ----------

ui.joinForm.addEventListener('submit', (ev) => {
  ev.preventDefault();
  // jwt mode: the token names the user, no display name to check or remember (a saved
  // one still goes along, in case the gateway turns out to be anonymous).
  const n = state.tokenMode ? { name: validName(ui.name.value).name || '' } : validName(ui.name.value);
  if (n.error) {
    showHint(n.error);
    ui.name.focus();
    return;
  }
  const r = validRoom(ui.room.value);
  if (r.error) {
    showHint(r.error);
    ui.room.focus();
    return;
  }
  if (!state.tokenMode) store(STORE_NAME, n.name);
  hideBanner('removed');
  addRoom(r.room, n.name, true);
  ui.room.value = '';
  ui.text.focus();
});

ui.sendForm.addEventListener('submit', (ev) => {
  ev.preventDefault();
  const text = ui.text.value;
  const r = currentRoom();
  if (text.trim() === '' || !r) return;
  // A room we are in, or were in before the connection dropped (the library rejoins it
  // and sends the message then).
  if (r.room === null || r.status === 'failed') {
    systemLine(r, 'error', 'not connected to this room yet; the message was not sent');
    return;
  }
  sendMessage(r, r.room, text);
  ui.text.value = '';
});

ui.membersMore.addEventListener('click', () => {
  const r = currentRoom();
  if (r) requestMembers(r, false);
});

ui.membersReload.addEventListener('click', () => {
  const r = currentRoom();
  if (r) requestMembers(r, true);
});

ui.text.addEventListener('input', () => {
  const r = currentRoom();
  if (r && r.room !== null && ui.text.value.trim() !== '') r.room.typing();
});

// ---------- start ----------

const fragment = readFragment();
state.refreshUrl = fragment.refreshUrl;
const clientOptions = {};
if (fragment.token !== null) clientOptions.token = fragment.token;
if (state.refreshUrl !== null) clientOptions.getToken = fetchToken;
const client = new RoomcastClient(wsUrl(), clientOptions);
client.on('state', onClientState);
client.on('error', onClientError);
client.on('expiring', onExpiring);
client.on('refreshed', onRefreshed);

if (fragment.token !== null || state.refreshUrl !== null) setTokenMode(true);
const savedName = load(STORE_NAME);
if (savedName !== null) ui.name.value = savedName;
let savedRooms = [];
try {
  const parsed = JSON.parse(load(STORE_ROOMS) || '[]');
  if (Array.isArray(parsed)) savedRooms = parsed.filter((r) => typeof r === 'string' && ROOM_RE.test(r));
} catch (_) {
  savedRooms = [];
}
const savedCurrent = load(STORE_CURRENT);
const who = validName(savedName || '');
if (state.tokenMode && who.name === undefined) who.name = '';
if (who.name !== undefined) {
  for (const r of savedRooms) addRoom(r, who.name, false);
  if (savedCurrent !== null && state.rooms.has(savedCurrent)) selectRoom(savedCurrent);
}
updateComposer();
if (!ui.name.value && !state.tokenMode) ui.name.focus();
else ui.room.focus();
// Rejects only when the client stops for good; its `state` event says why.
client.connect().catch(() => {});
