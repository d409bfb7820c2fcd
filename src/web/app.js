// roomcast chat page: one WebSocket to the gateway that served this page (/ws),
// several rooms, reconnect with jittered exponential backoff and resume with `since`
// (docs/protocol.md, "Resuming after a reconnect").
//
// A fresh join asks for the room's recent history (`history`), so someone entering a room
// sees the conversation they walked into; a rejoin after a reconnect resumes with `since`.
// Every send carries a random idempotency key (`idem`) and waits in an outbox, shown as
// pending, until its `ack`: after a reconnect (once the room is rejoined), or after an
// `unavailable` error, it is sent again with the same key, so the server publishes it once.
// Typing: a `typing` frame at most once a second while the user types; others' notices
// show under the messages and go 3 s after their last `typing` frame, or with their message.
//
// Members: `joined` lists only the first page of a large room (`member_count` says how many
// there are, `members_next` where the rest starts); "Show more members" asks for the next
// page (`members` with `after`) and merges it in, each member once. Small rooms keep the
// list current with `presence` join/leave notices. Large rooms get a `summary` instead (count,
// joins, leaves, at most every few seconds): the count stays current, the list cannot, so it
// says it may be out of date and offers to load it again from the start.
//
// jwt mode (docs/protocol.md, "Authentication"): open the page as `/#token=<jwt>`, optionally
// `&refresh=<url-encoded same-origin URL>`. The token is read from the fragment (never sent
// in a query string, never logged), removed from the address bar, sent as the first frame
// (`auth`) on every connection, and renewed from the refresh URL on `expiring`. Without a
// token in the fragment the page is the anonymous chat it always was.
//
// Rule: text that comes from the network or the user is only ever put into the page with
// textContent / createTextNode, never innerHTML.
'use strict';

(() => {
  const ROOM_RE = /^[A-Za-z0-9._:-]{1,64}$/;
  const COLOR_RE = /^#[0-9a-fA-F]{6}$/;
  const CONTROL_RE = /[\u0000-\u001f\u007f-\u009f]/;
  const MAX_NAME_CHARS = 32;
  const MAX_LINES_PER_ROOM = 1000; // DOM lines kept per room
  const MAX_SEEN_IDS = 10000; // message ids remembered per room for de-duplication
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 10000;
  const JOIN_RETRY_MS = 3000; // retry a join refused with `unavailable`
  const HISTORY_ON_JOIN = 50; // recent messages asked for on a fresh join
  const SEND_RETRY_MIN_MS = 1000; // first retry of a send refused with `unavailable`
  const SEND_RETRY_MAX_MS = 10000;
  const TYPING_SEND_MS = 1000; // at most one `typing` frame per room per second
  const TYPING_SHOW_MS = 3000; // a notice goes this long after its user's last `typing`
  const TYPING_REF = 'typing'; // the `ref` of every `typing` frame: errors for it are ignored
  const STORE_NAME = 'roomcast.name';
  const STORE_ROOMS = 'roomcast.rooms';
  const STORE_CURRENT = 'roomcast.current';
  // Join errors after which re-sending the same join cannot succeed.
  const FATAL_JOIN_ERRORS = new Set([
    'invalid_room', 'invalid_name', 'too_many_rooms', 'bad_request', 'forbidden', 'unauthorized',
  ]);
  // Send errors after which the same send (same `idem`) is tried again later; any other
  // error is final: the message leaves the outbox and its line says why.
  const RETRY_SEND_ERRORS = new Set(['unavailable', 'rate_limited']);
  // Close codes after which reconnecting with the same token is pointless.
  const AUTH_CLOSES = new Map([
    [4001, 'unauthorized'],
    [4002, 'expired'],
    [4003, 'forbidden'],
  ]);
  const AUTH_REF = 'auth';

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
   * One joined (or joining) room.
   * @typedef {{
   *   name: string, user: string, state: 'offline'|'joining'|'joined'|'failed',
   *   since: (string|null), cursor: (string|null), seen: Set<string>,
   *   lines: HTMLElement[], members: Map<string, Member>, memberCount: (number|null),
   *   membersNext: (string|null), membersStale: boolean,
   *   membersLoading: (null|'more'|'reload'), membersError: (string|null), paging: Paging,
   *   unread: number,
   *   tab: HTMLElement, badge: HTMLElement, retry: (number|null), everJoined: boolean,
   *   me: ({name: string, color: string, id: (string|null)}|null),
   *   typing: Map<string, {name: string, timer: number}>, typingSentAt: number,
   *   historyAnchor: (HTMLElement|null), awaiting: Map<string, HTMLElement>
   * }} Room
   * `me`: who `joined` says we are. `typing`: who else is typing, by member key.
   * `historyAnchor`: the "You joined" line while the history of a fresh join arrives (it
   * goes above it). `awaiting`: acked sends' lines, by id, until the message itself arrives.
   * `members`: who we know is in the room, by member key (see memberKey). `memberCount`: the
   * server's `member_count` (null from a gateway that sends none: the list is the count).
   * `membersNext`: the cursor of the next page (null: none). `membersStale`: a `summary` came,
   * so joins and leaves are no longer in the list. `membersLoading`: a `members` request in
   * flight (at most one per room).
   */

  /**
   * One member as the list shows it. `count`: connections sharing the key (anonymous mode:
   * one member per connection, and two connections may share a name).
   * @typedef {{name: string, color: string, id: (string|null), count: number}} Member
   */

  /**
   * One paging of the member list: `joined`'s page and the pages after it, or a reload from
   * the start. Replies of an older paging (`epoch`) are ignored. `seen`: entries per member
   * key in the pages so far (a key on two pages is two connections). `gone`: keys that left
   * (notice) during the paging, so a page read before they left does not list them again.
   * `arrived`: members who joined (notice) during it, kept when a reload replaces the list.
   * @typedef {{
   *   epoch: number, seen: Map<string, number>, gone: Set<string>,
   *   arrived: Map<string, {name: string, color: string, id: (string|null)}>
   * }} Paging
   */

  /**
   * One send not acked yet (or acked, until its message arrives).
   * @typedef {{
   *   idem: string, room: string, text: string, ref: (string|null), retry: (number|null),
   *   failures: number, line: HTMLElement
   * }} Outgoing
   * `ref`: the `ref` of the copy in flight on the current socket (null: none in flight).
   */

  const state = {
    /** @type {WebSocket|null} */ ws: null,
    ready: false, // `welcome` received on the current socket
    attempt: 0, // reconnect attempts since the last welcome
    timer: null,
    /** @type {Map<string, Room>} */ rooms: new Map(),
    /** @type {string|null} */ current: null,
    refSeq: 0,
    /** @type {Map<string, {kind: string, room: string, idem?: string}>} */ refs: new Map(),
    /** @type {Map<string, Outgoing>} by idem key, in the order they were sent */ outbox: new Map(),
    typingUnsupported: false, // the gateway refused a `typing` frame: stop sending them
    membersUnsupported: false, // the gateway does not know `members`: no paging
    pagingSeq: 0, // the last Paging epoch handed out (unique across rooms)
    // jwt mode: the connection token (memory only) and where to get a new one.
    /** @type {string|null} */ token: null,
    /** @type {string|null} */ refreshUrl: null,
    refreshing: false,
    // Set when the server refused who we are (4001/4002/4003, or the token): no reconnect.
    stopped: false,
  };

  // ---------- token from the URL fragment ----------

  /** Reads `#token=...&refresh=...` and removes both from the address bar. */
  function readFragment() {
    const hash = window.location.hash.replace(/^#/, '');
    if (hash === '') return;
    let params;
    try {
      params = new URLSearchParams(hash);
    } catch (_) {
      return;
    }
    const token = (params.get('token') || '').trim();
    const refresh = (params.get('refresh') || '').trim();
    if (!params.has('token') && !params.has('refresh')) return;
    if (token !== '') state.token = token;
    if (refresh !== '') state.refreshUrl = sameOriginUrl(refresh);
    params.delete('token');
    params.delete('refresh');
    const rest = params.toString();
    try {
      const url = window.location.pathname + window.location.search + (rest ? `#${rest}` : '');
      window.history.replaceState(window.history.state, '', url);
    } catch (_) {
      // not allowed here (file://): the token stays in the address bar, nothing else changes.
    }
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

  /** The server refused who we are: say so, and stop reconnecting. */
  function notAuthorized(kind, text) {
    state.stopped = true;
    if (state.timer !== null) {
      clearTimeout(state.timer);
      state.timer = null;
    }
    showBanner(kind, text);
    if (kind === 'unauthorized') ui.identity.hidden = true; // not signed in after all
    setStatus('stopped', kind === 'expired' ? 'session expired' : 'not authorized');
  }

  // ---------- identity (jwt mode) ----------

  /** With a token the name field is not needed: the token's `name` claim is the name. */
  function setTokenMode(on) {
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
    const names = [...state.rooms.values()].filter((r) => r.state !== 'failed').map((r) => r.name);
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

  // ---------- connection ----------

  function wsUrl() {
    const scheme = window.location.protocol === 'https:' ? 'wss:' : 'ws:';
    return `${scheme}//${window.location.host}/ws`;
  }

  function setStatus(kind, text) {
    ui.status.dataset.state = kind;
    ui.status.textContent = text;
  }

  function connect() {
    if (state.timer !== null) {
      clearTimeout(state.timer);
      state.timer = null;
    }
    if (state.stopped) return;
    setStatus('connecting', 'connecting…');
    let ws;
    try {
      ws = new WebSocket(wsUrl());
    } catch (_) {
      scheduleReconnect('cannot open a WebSocket here');
      return;
    }
    state.ws = ws;
    state.ready = false;
    ws.onopen = () => {
      // jwt mode: the token goes first, as a frame (never in the URL); `welcome` answers it.
      if (state.ws !== ws || state.token === null) return;
      setStatus('connecting', 'signing in…');
      ws.send(JSON.stringify({ type: 'auth', token: state.token, ref: AUTH_REF }));
    };
    ws.onmessage = (ev) => {
      if (state.ws === ws && typeof ev.data === 'string') onFrame(ev.data);
    };
    ws.onclose = (ev) => {
      if (state.ws === ws) onDisconnected(ev);
    };
    ws.onerror = () => {}; // a close event always follows
  }

  function sendFrame(frame) {
    if (!state.ws || !state.ready || state.ws.readyState !== WebSocket.OPEN) return false;
    state.ws.send(JSON.stringify(frame));
    return true;
  }

  function nextRef(kind, room, extra) {
    state.refSeq += 1;
    const ref = `${kind[0]}${state.refSeq}`;
    state.refs.set(ref, { kind, room, ...extra });
    return ref;
  }

  function onDisconnected(ev) {
    state.ws = null;
    state.ready = false;
    state.refs.clear();
    ui.node.textContent = '–';
    for (const room of state.rooms.values()) {
      if (room.retry !== null) {
        clearTimeout(room.retry);
        room.retry = null;
      }
      room.historyAnchor = null;
      room.membersLoading = null; // its answer will not come: the rejoin brings a fresh list
      clearTyping(room);
      if (room.state !== 'failed') setRoomState(room, 'offline');
    }
    // Nothing is in flight any more: unacked sends go again once their room is rejoined.
    for (const out of state.outbox.values()) {
      out.ref = null;
      if (out.retry !== null) {
        clearTimeout(out.retry);
        out.retry = null;
      }
    }
    renderMembers();
    renderTyping();
    const auth = AUTH_CLOSES.get(ev.code);
    if (auth === 'expired') {
      notAuthorized('expired', 'Session expired: sign in again to keep chatting.');
    } else if (auth === 'forbidden') {
      notAuthorized('forbidden', 'Disconnected by the server: you are no longer allowed here.');
    } else if (auth === 'unauthorized' && !state.stopped) {
      notAuthorized(
        'unauthorized',
        state.token === null
          ? 'Not authorized: this chat needs a sign-in token (open it from your sign-in link).'
          : `Not authorized: ${ev.reason || 'unauthorized'}`,
      );
    }
    if (state.stopped) return;
    const why = ev.code === 1001 ? 'node draining' : ev.reason || (ev.code ? `closed ${ev.code}` : 'closed');
    scheduleReconnect(why);
  }

  function scheduleReconnect(why) {
    // 0.5 s doubling up to 10 s, each delay randomised by ±50%.
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** Math.min(state.attempt, 16));
    const delay = base * (0.5 + Math.random());
    state.attempt += 1;
    setStatus('reconnecting', `disconnected (${why}), reconnecting in ${(delay / 1000).toFixed(1)} s`);
    state.timer = setTimeout(connect, delay);
  }

  // ---------- rooms ----------

  function joinRoom(room) {
    const frame = { type: 'join', room: room.name };
    // jwt mode ignores `name` (the token names the user); anonymous mode needs it.
    if (room.user) frame.name = room.user;
    // Resume from the cursor when we have one: the server replays what we missed.
    // Otherwise ask for the recent history: the conversation we walk into.
    room.since = room.cursor;
    if (room.since !== null) frame.since = room.since;
    else frame.history = HISTORY_ON_JOIN;
    frame.ref = nextRef('join', room.name);
    if (sendFrame(frame)) setRoomState(room, 'joining');
  }

  function addRoom(name, user, select) {
    let room = state.rooms.get(name);
    if (!room) {
      room = {
        name,
        user,
        state: 'offline',
        since: null,
        cursor: null,
        seen: new Set(),
        lines: [],
        members: new Map(),
        memberCount: null,
        membersNext: null,
        membersStale: false,
        membersLoading: null,
        membersError: null,
        paging: newPaging(),
        unread: 0,
        tab: null,
        badge: null,
        retry: null,
        everJoined: false,
        me: null,
        typing: new Map(),
        typingSentAt: 0,
        historyAnchor: null,
        awaiting: new Map(),
      };
      state.rooms.set(name, room);
      buildTab(room);
      if (state.ready) joinRoom(room);
    } else if (room.state === 'failed') {
      room.user = user;
      if (state.ready) joinRoom(room);
    }
    if (select || state.current === null) selectRoom(name);
    saveRooms();
    return room;
  }

  function leaveRoom(name) {
    const room = state.rooms.get(name);
    if (!room) return;
    if (room.state === 'joined' || room.state === 'joining') sendFrame({ type: 'leave', room: name });
    if (room.retry !== null) clearTimeout(room.retry);
    clearTyping(room);
    dropOutbox(room);
    state.rooms.delete(name);
    room.tab.parentElement.remove();
    if (state.current === name) {
      const next = state.rooms.keys().next();
      state.current = null;
      selectRoom(next.done ? null : next.value);
    }
    saveRooms();
  }

  function buildTab(room) {
    const li = document.createElement('li');
    const tab = document.createElement('button');
    tab.type = 'button';
    tab.className = 'room-tab';
    tab.dataset.room = room.name;
    tab.dataset.state = room.state;
    const label = document.createElement('span');
    label.className = 'room-name';
    label.textContent = room.name;
    const badge = document.createElement('span');
    badge.className = 'badge';
    badge.hidden = true;
    tab.append(label, badge);
    tab.addEventListener('click', () => selectRoom(room.name));

    const close = document.createElement('button');
    close.type = 'button';
    close.className = 'room-leave';
    close.dataset.room = room.name;
    close.setAttribute('aria-label', `Leave ${room.name}`);
    close.title = `Leave ${room.name}`;
    close.textContent = '×';
    close.addEventListener('click', () => leaveRoom(room.name));

    li.append(tab, close);
    ui.rooms.append(li);
    room.tab = tab;
    room.badge = badge;
  }

  function setRoomState(room, s) {
    room.state = s;
    room.tab.dataset.state = s;
    room.tab.title = `${room.name}: ${s}`;
    if (room.name === state.current) updateComposer();
  }

  function selectRoom(name) {
    state.current = name;
    const room = name === null ? null : state.rooms.get(name);
    for (const r of state.rooms.values()) {
      if (r === room) r.tab.setAttribute('aria-current', 'true');
      else r.tab.removeAttribute('aria-current');
    }
    if (room) {
      room.unread = 0;
      updateBadge(room);
      ui.roomTitle.textContent = `# ${room.name}`;
      ui.messages.replaceChildren(...room.lines);
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

  function updateBadge(room) {
    room.badge.hidden = room.unread === 0;
    room.badge.textContent = room.unread > 99 ? '99+' : String(room.unread);
    room.badge.setAttribute('aria-label', `${room.unread} unread`);
  }

  // ---------- lines ----------

  function appendLine(room, node) {
    const isCurrent = room.name === state.current;
    const box = ui.messages;
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
    room.lines.push(node);
    if (room.lines.length > MAX_LINES_PER_ROOM) {
      const old = room.lines.shift();
      if (isCurrent) old.remove();
    }
    if (isCurrent) {
      box.append(node);
      if (atBottom) box.scrollTop = box.scrollHeight;
    }
  }

  /** Puts `node` just above `anchor` (a line of `room`), or at the end if `anchor` is gone. */
  function insertLineBefore(room, node, anchor) {
    const i = room.lines.indexOf(anchor);
    if (i < 0) {
      appendLine(room, node);
      return;
    }
    const isCurrent = room.name === state.current;
    const box = ui.messages;
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
    room.lines.splice(i, 0, node);
    if (room.lines.length > MAX_LINES_PER_ROOM) {
      const old = room.lines.shift();
      if (isCurrent) old.remove();
    }
    if (isCurrent && anchor.parentNode === box) {
      anchor.before(node);
      if (atBottom) box.scrollTop = box.scrollHeight;
    }
  }

  function removeLine(room, node) {
    const i = room.lines.indexOf(node);
    if (i >= 0) room.lines.splice(i, 1);
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
  function systemLine(room, kind, text) {
    const line = document.createElement('div');
    line.className = `sys sys-${kind}`;
    line.dataset.kind = kind;
    const body = document.createElement('span');
    body.className = 'sys-text';
    body.textContent = text;
    line.append(timeEl(Date.now()), body);
    if (room) {
      appendLine(room, line);
    } else {
      const cur = state.current === null ? null : state.rooms.get(state.current);
      if (cur) appendLine(cur, line);
      else showHint(text);
    }
  }

  function showHint(text) {
    ui.hint.textContent = text;
    ui.hint.hidden = false;
  }

  function messageLine(msg) {
    const line = document.createElement('div');
    line.className = msg.replay ? 'msg replay' : 'msg';
    line.dataset.id = msg.id;
    if (msg.replay) line.dataset.replay = 'true';
    const from = document.createElement('span');
    from.className = 'from';
    from.textContent = msg.name;
    from.style.color = safeColor(msg.color);
    const text = document.createElement('span');
    text.className = 'text';
    text.textContent = msg.text;
    line.append(timeEl(msg.ts), from, text);
    return line;
  }

  // ---------- members ----------

  /** Who a member is: the user id in jwt mode (two users may share a name), else the name. */
  function memberKey(m) {
    return m.id !== null ? `id:${m.id}` : `name:${m.name}`;
  }

  function newPaging() {
    state.pagingSeq += 1;
    return { epoch: state.pagingSeq, seen: new Map(), gone: new Set(), arrived: new Map() };
  }

  function currentRoom() {
    return state.current === null ? null : state.rooms.get(state.current) || null;
  }

  /** Adds one connection of `u` to the list (a user with an id is listed once, however many). */
  function addMember(room, u) {
    const key = memberKey(u);
    const e = room.members.get(key);
    if (e) e.count = u.id !== null ? 1 : e.count + 1;
    else room.members.set(key, { name: u.name, color: u.color, id: u.id, count: 1 });
  }

  /**
   * Merges one page of the current paging into the list, each member once: a key already
   * listed (from an earlier page or a join notice) keeps its entry, and counts as many
   * connections as the pages so far show for it. With `replace`, the page starts the list
   * afresh (a reload), keeping who joined while it loaded.
   */
  function mergeMembers(room, list, replace) {
    const paging = room.paging;
    if (replace) {
      room.members = new Map();
    }
    for (const raw of Array.isArray(list) ? list : []) {
      const u = user(raw);
      const key = memberKey(u);
      const seen = (paging.seen.get(key) || 0) + 1;
      paging.seen.set(key, seen);
      const e = room.members.get(key);
      if (e) {
        e.count = u.id !== null ? 1 : Math.max(e.count, seen);
      } else if (!paging.gone.has(key)) {
        room.members.set(key, { name: u.name, color: u.color, id: u.id, count: 1 });
      }
    }
    if (replace) {
      for (const u of paging.arrived.values()) {
        if (!room.members.has(memberKey(u))) addMember(room, u);
      }
    }
    // We are in the room even when our entry is on a page not loaded yet.
    if (room.me !== null && !room.members.has(memberKey(room.me))) addMember(room, room.me);
  }

  /** `member_count` of a frame, if it has a usable one. */
  function countOf(f) {
    return Number.isSafeInteger(f.member_count) && f.member_count >= 0 ? f.member_count : null;
  }

  function cursorOf(v) {
    return typeof v === 'string' && v !== '' ? v : null;
  }

  /** Connections listed (what `member_count` counts: users, or anonymous connections). */
  function listedCount(room) {
    let n = 0;
    for (const m of room.members.values()) n += m.count;
    return n;
  }

  /**
   * Asks for the next page of the member list, or (`fresh`) for the first page of a new
   * paging that replaces the list. One request per room at a time.
   */
  function requestMembers(room, fresh) {
    if (state.membersUnsupported || room.state !== 'joined' || room.membersLoading !== null) return;
    if (!fresh && room.membersNext === null) return;
    const prev = { paging: room.paging, stale: room.membersStale };
    if (fresh) {
      room.paging = newPaging();
      // Joins and leaves from now on are in the new paging (or come as notices).
      room.membersStale = false;
    }
    const frame = { type: 'members', room: room.name };
    if (!fresh) frame.after = room.membersNext;
    const ref = nextRef('members', room.name, { epoch: room.paging.epoch, fresh, stale: prev.stale });
    frame.ref = ref;
    if (!sendFrame(frame)) {
      state.refs.delete(ref);
      room.paging = prev.paging;
      room.membersStale = prev.stale;
      return;
    }
    room.membersLoading = fresh ? 'reload' : 'more';
    room.membersError = null;
    if (room === currentRoom()) renderMembersInfo();
  }

  /** The answer to `requestMembers`; one of an older paging, or of a room left since, is ignored. */
  function onMembers(f) {
    const info = typeof f.ref === 'string' ? state.refs.get(f.ref) : undefined;
    if (!info || info.kind !== 'members') return;
    state.refs.delete(f.ref);
    const room = state.rooms.get(info.room);
    if (!room || f.room !== info.room || room.paging.epoch !== info.epoch || room.state !== 'joined') return;
    room.membersLoading = null;
    room.membersError = null;
    mergeMembers(room, f.members, info.fresh);
    const count = countOf(f);
    if (count !== null) room.memberCount = count;
    room.membersNext = cursorOf(f.next);
    if (room === currentRoom()) renderMembers();
  }

  /** A `members` request was refused: the list stays as it was, and says so quietly. */
  function onMembersError(info, code) {
    const room = state.rooms.get(info.room);
    if (!room || room.paging.epoch !== info.epoch) return;
    room.membersLoading = null;
    if (info.fresh && info.stale) room.membersStale = true; // the old list stays, as stale as before
    if (code === 'unknown_type') {
      state.membersUnsupported = true; // an older gateway: the first page is all there is
    } else if (code === 'not_joined') {
      // Removed or left meanwhile: `left` (or the rejoin) says the rest.
    } else {
      room.membersError = `could not load members (${code})`;
    }
    if (room === currentRoom()) renderMembersInfo();
  }

  function renderMembers() {
    const room = currentRoom();
    const items = room && room.state === 'joined'
      ? [...room.members.entries()]
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
    const room = currentRoom();
    const focused = document.activeElement;
    if (!room || room.state !== 'joined') {
      ui.memberCount.textContent = '';
      delete ui.memberCount.dataset.count;
      ui.membersNote.hidden = true;
      ui.membersNote.textContent = '';
      delete ui.membersNote.dataset.state;
      ui.membersMore.hidden = true;
      ui.membersReload.hidden = true;
      ui.members.removeAttribute('aria-busy');
    } else {
      const listed = listedCount(room);
      const count = room.memberCount !== null ? room.memberCount : listed;
      const paging = !state.membersUnsupported;
      const more = paging && room.membersNext !== null;
      const short = listed < count;
      const reload = paging && (room.membersStale || (!more && short));
      ui.memberCount.textContent = `(${count.toLocaleString()})`;
      ui.memberCount.dataset.count = String(count);
      let note = '';
      let kind = '';
      if (room.membersStale) {
        kind = 'stale';
        note = `${count.toLocaleString()} ${count === 1 ? 'member' : 'members'} — showing ${listed.toLocaleString()}; the list may be out of date`;
      } else if (more || short) {
        kind = 'partial';
        note = `Showing ${listed.toLocaleString()} of ${count.toLocaleString()}`;
      }
      if (room.membersError !== null) {
        kind = kind || 'error';
        note = note ? `${note} · ${room.membersError}` : room.membersError;
      }
      ui.membersNote.hidden = note === '';
      if (ui.membersNote.textContent !== note) ui.membersNote.textContent = note;
      if (kind) ui.membersNote.dataset.state = kind;
      else delete ui.membersNote.dataset.state;
      const loading = room.membersLoading;
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

  /** Tells the room we are typing: at most once per TYPING_SEND_MS (the server drops extras). */
  function sendTyping(room) {
    if (state.typingUnsupported || room.state !== 'joined') return;
    const now = Date.now();
    if (now - room.typingSentAt < TYPING_SEND_MS) return;
    room.typingSentAt = now;
    sendFrame({ type: 'typing', room: room.name, ref: TYPING_REF });
  }

  function clearTyping(room) {
    for (const t of room.typing.values()) clearTimeout(t.timer);
    room.typing.clear();
  }

  /** `u` stopped typing (their message arrived, they left). */
  function stopTyping(room, u) {
    const key = memberKey(u);
    const t = room.typing.get(key);
    if (!t) return;
    clearTimeout(t.timer);
    room.typing.delete(key);
    if (room.name === state.current) renderTyping();
  }

  /** "bob is typing…", "bob and carol are typing…" for the current room (empty: nobody). */
  function renderTyping() {
    const room = state.current === null ? null : state.rooms.get(state.current);
    const names = room && room.state === 'joined'
      ? [...room.typing.values()].map((t) => t.name).sort((a, b) => a.localeCompare(b))
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

  // ---------- outbox ----------

  /** A random idempotency key (a UUID: 36 bytes, under the 64 allowed). */
  function idemKey() {
    const c = window.crypto;
    if (c && typeof c.randomUUID === 'function') return c.randomUUID(); // secure contexts only
    const bytes = new Uint8Array(16);
    if (c && typeof c.getRandomValues === 'function') c.getRandomValues(bytes);
    else for (let i = 0; i < bytes.length; i += 1) bytes[i] = Math.floor(Math.random() * 256);
    return [...bytes].map((b) => b.toString(16).padStart(2, '0')).join('');
  }

  /** Our own message while it is not acked: `data-state` pending, sent, rejected or failed. */
  function outgoingLine(room, text) {
    const me = room.me || { name: room.user || 'you', color: '' };
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

  function setOutgoingState(out, s, note) {
    out.line.dataset.state = s;
    out.line.querySelector('.send-state').textContent = note;
  }

  /** Queues `text` for `room` with a fresh idem key and sends it if the room is joined. */
  function queueSend(room, text) {
    const out = {
      idem: idemKey(),
      room: room.name,
      text,
      ref: null,
      retry: null,
      failures: 0,
      line: outgoingLine(room, text),
    };
    state.outbox.set(out.idem, out);
    appendLine(room, out.line);
    // Anything older still waiting for a retry goes first, so the order is kept.
    flushOutbox(room, true);
  }

  /**
   * Sends every unacked message of `room` that is not in flight, in order, each with its
   * own idem key (so the server publishes a repeat only once). With `now`, also those
   * waiting for a retry timer.
   */
  function flushOutbox(room, now) {
    if (room.state !== 'joined') return;
    for (const out of state.outbox.values()) {
      if (out.room !== room.name || out.ref !== null) continue;
      if (out.retry !== null) {
        if (!now) continue;
        clearTimeout(out.retry);
        out.retry = null;
      }
      const ref = nextRef('send', room.name, { idem: out.idem });
      if (!sendFrame({ type: 'send', room: room.name, text: out.text, idem: out.idem, ref })) {
        state.refs.delete(ref);
        return; // not connected: everything goes once the room is rejoined
      }
      out.ref = ref;
    }
  }

  /** Tries `out` again later (jittered backoff), or sooner when the room shows signs of life. */
  function retrySendLater(out) {
    const base = Math.min(SEND_RETRY_MAX_MS, SEND_RETRY_MIN_MS * 2 ** Math.min(out.failures, 16));
    out.failures += 1;
    out.retry = setTimeout(() => {
      out.retry = null;
      const room = state.rooms.get(out.room);
      if (room && state.outbox.get(out.idem) === out) flushOutbox(room, false);
    }, base * (0.5 + Math.random()));
  }

  /** Takes `out` out of the outbox for good; its line stays, saying why it was not sent. */
  function failSend(out, s, note) {
    state.outbox.delete(out.idem);
    if (out.retry !== null) clearTimeout(out.retry);
    out.retry = null;
    setOutgoingState(out, s, note);
  }

  /** The room is gone (left, removed): its unsent messages with it. */
  function dropOutbox(room, note) {
    for (const out of [...state.outbox.values()]) {
      if (out.room === room.name) failSend(out, 'failed', note || 'not sent');
    }
  }

  function onAck(f) {
    const info = typeof f.ref === 'string' ? state.refs.get(f.ref) : undefined;
    if (info) state.refs.delete(f.ref);
    if (!info || info.kind !== 'send') return;
    const out = state.outbox.get(info.idem);
    const room = state.rooms.get(info.room);
    if (!out || !room) return;
    state.outbox.delete(out.idem);
    if (out.retry !== null) clearTimeout(out.retry);
    out.retry = null;
    // `duplicate`: an earlier copy was published after all; the id is that copy's.
    const id = typeof f.id === 'string' ? f.id : null;
    if (id === null || room.seen.has(id)) {
      removeLine(room, out.line); // the message itself is already shown
    } else {
      // The line stands in for the message until it arrives (in its place among the others).
      setOutgoingState(out, 'sent', '');
      out.line.dataset.id = id;
      room.awaiting.set(id, out.line);
    }
    flushOutbox(room, true); // publishing works: what waits for a retry can go now
  }

  // ---------- frames from the server ----------

  function user(u) {
    const name = u && typeof u.name === 'string' ? u.name : '?';
    const color = u && typeof u.color === 'string' ? u.color : '';
    const id = u && typeof u.id === 'string' ? u.id : null;
    return { name, color, id };
  }

  function onFrame(data) {
    let f;
    try {
      f = JSON.parse(data);
    } catch (_) {
      return;
    }
    if (!f || typeof f !== 'object') return;
    const room = typeof f.room === 'string' ? state.rooms.get(f.room) : undefined;
    switch (f.type) {
      case 'welcome':
        onWelcome(f);
        break;
      case 'joined':
        if (room) onJoined(room, f);
        break;
      case 'message':
        if (room) onMessage(room, f);
        break;
      case 'presence':
        if (room) onPresence(room, f);
        break;
      case 'members':
        // A room left meanwhile finds no ref (or no room): the answer is dropped.
        onMembers(f);
        break;
      case 'ack':
        onAck(f);
        break;
      case 'left':
        // An answer to our `leave` finds no room: it was removed locally when leave was sent.
        if (room) onLeft(room, f);
        break;
      case 'typing':
        if (room) onTyping(room, f);
        break;
      case 'error':
        onError(f);
        break;
      case 'expiring':
        onExpiring(f);
        break;
      case 'refreshed':
        onRefreshed(f);
        break;
      default:
        break;
    }
  }

  function onWelcome(f) {
    state.ready = true;
    hideBanner('refresh');
    state.attempt = 0;
    ui.node.textContent = typeof f.node === 'string' ? f.node : '?';
    setStatus('connected', 'connected');
    for (const room of state.rooms.values()) {
      if (room.state !== 'failed') joinRoom(room);
    }
  }

  function onJoined(room, f) {
    const first = !room.everJoined;
    room.everJoined = true;
    const me = user(f.you);
    room.me = me;
    // The first page of the members (the rest by `members`): a new paging, a fresh list.
    room.paging = newPaging();
    room.membersLoading = null;
    room.membersError = null;
    room.membersStale = false;
    mergeMembers(room, f.members, true);
    room.memberCount = countOf(f);
    room.membersNext = cursorOf(f.members_next);
    if (room.since === null) {
      // A join without `since`: messages after `offset` are the ones we will see.
      room.cursor = typeof f.offset === 'string' ? f.offset : null;
    } else if (f.recovered === false) {
      systemLine(room, 'missed', 'some messages may have been missed');
    }
    setRoomState(room, 'joined');
    if (me.id !== null) showIdentity(me.name);
    if (first) {
      systemLine(room, 'joined', `You joined ${room.name} as ${me.name}`);
      // The history of a fresh join follows `joined`: it goes above this line.
      if (room.since === null) room.historyAnchor = room.lines[room.lines.length - 1] || null;
    }
    if (room.name === state.current) {
      renderMembers();
      renderTyping();
    }
    flushOutbox(room, true); // what was not acked before the reconnect, same idem keys
  }

  /** Orders message ids (`<ms>-<seq>`, docs/protocol.md): negative if `a` is older. */
  function compareIds(a, b) {
    const pa = /^(\d+)-(\d+)$/.exec(a);
    const pb = /^(\d+)-(\d+)$/.exec(b);
    if (!pa || !pb) return a === b ? 0 : 1;
    return Number(pa[1]) - Number(pb[1]) || Number(pa[2]) - Number(pb[2]);
  }

  function onMessage(room, f) {
    if (typeof f.id !== 'string') return;
    const replay = f.replay === true;
    // Replays come right after `joined`, before anything live: once something live
    // arrives, the history of the join is complete.
    if (!replay) room.historyAnchor = null;
    if (room.seen.has(f.id)) return; // replays after a resume may repeat what we have
    room.seen.add(f.id);
    if (room.seen.size > MAX_SEEN_IDS) room.seen.delete(room.seen.values().next().value);
    // Never move the cursor back (a history replay is older than `offset`).
    if (room.cursor === null || compareIds(f.id, room.cursor) > 0) room.cursor = f.id;
    const from = user(f.from);
    // Our own message: its pending line makes way for it.
    const mine = room.awaiting.get(f.id);
    if (mine) {
      room.awaiting.delete(f.id);
      removeLine(room, mine);
    }
    const line = messageLine({
      id: f.id, name: from.name, color: from.color, text: String(f.text ?? ''), ts: f.ts, replay,
    });
    const history = replay && room.historyAnchor !== null;
    if (history) insertLineBefore(room, line, room.historyAnchor);
    else appendLine(room, line);
    if (!replay) {
      stopTyping(room, from); // their message is here: no longer "typing"
      flushOutbox(room, true); // publishing works: what waits for a retry can go now
    }
    if (room.name !== state.current && !history) {
      room.unread += 1;
      updateBadge(room);
    }
  }

  function onTyping(room, f) {
    if (room.state !== 'joined') return;
    const u = user(f.user);
    // Never ourselves (another tab of ours, or a server that echoes).
    if (room.me !== null && memberKey(u) === memberKey(room.me)) return;
    const key = memberKey(u);
    const prev = room.typing.get(key);
    if (prev) clearTimeout(prev.timer);
    const timer = setTimeout(() => {
      if (room.typing.get(key)?.timer !== timer) return;
      room.typing.delete(key);
      if (room.name === state.current) renderTyping();
    }, TYPING_SHOW_MS);
    room.typing.set(key, { name: u.name, timer });
    if (room.name === state.current) renderTyping();
  }

  /** The server took us out of the room (`reason`): say so, and do not join it again. */
  function onLeft(room, f) {
    if (typeof f.reason !== 'string') return; // an answer to a `leave` of an earlier visit
    const text = f.reason === 'removed'
      ? `You were removed from ${room.name}`
      : `You are no longer in ${room.name} (${f.reason})`;
    if (room.retry !== null) {
      clearTimeout(room.retry);
      room.retry = null;
    }
    room.members = new Map();
    room.memberCount = null;
    room.membersNext = null;
    room.membersStale = false;
    room.membersLoading = null;
    room.membersError = null;
    room.paging = newPaging(); // a late page of the old paging finds no list to fill
    room.historyAnchor = null;
    clearTyping(room);
    dropOutbox(room, 'not sent: you are no longer in this room');
    systemLine(room, 'removed', text);
    // `failed`: not rejoined on reconnect nor on reload; joining it again is up to the user.
    setRoomState(room, 'failed');
    saveRooms();
    showBanner('removed', text);
    if (room.name === state.current) {
      renderMembers();
      renderTyping();
    }
  }

  /**
   * Small rooms: a notice per join or leave, which keeps the list current and gets a line.
   * Large rooms: a `summary` now and then, which keeps the count current but not the list
   * (no line for it: in a busy room that would be all the chat shows).
   */
  function onPresence(room, f) {
    if (room.state !== 'joined') return;
    room.historyAnchor = null;
    const count = countOf(f);
    if (f.event === 'summary') {
      if (count !== null) room.memberCount = count;
      room.membersStale = true;
      if (room.name === state.current) renderMembersInfo();
      return;
    }
    const u = user(f.user);
    const key = memberKey(u);
    if (f.event === 'join') {
      addMember(room, u);
      room.paging.gone.delete(key);
      room.paging.arrived.set(key, u);
      if (count !== null) room.memberCount = count;
      else if (room.memberCount !== null) room.memberCount += 1;
      systemLine(room, 'presence', `${u.name} joined`);
    } else if (f.event === 'leave') {
      const e = room.members.get(key);
      if (e && e.count > 1 && u.id === null) {
        e.count -= 1;
      } else {
        room.members.delete(key);
        room.paging.gone.add(key);
        room.paging.arrived.delete(key);
      }
      if (count !== null) room.memberCount = count;
      else if (room.memberCount !== null) room.memberCount = Math.max(0, room.memberCount - 1);
      systemLine(room, 'presence', `${u.name} left`);
      // In jwt mode `leave` means the user's last connection: no one is typing any more.
      // In anonymous mode another connection may share the name; it types again if it does.
      stopTyping(room, u);
    } else {
      return;
    }
    if (room.name === state.current) renderMembers();
  }

  function onExpiring(f) {
    const inMs = Number.isFinite(f.in_ms) ? f.in_ms : 0;
    const left = `${Math.max(1, Math.round(inMs / 1000))} s`;
    if (state.refreshUrl === null) {
      showBanner('refresh', `Your session ends in ${left}: sign in again to keep chatting.`);
      return;
    }
    if (state.refreshing) return;
    state.refreshing = true;
    fetch(state.refreshUrl, { credentials: 'same-origin', cache: 'no-store' })
      .then((res) => {
        if (!res.ok) throw new Error(`HTTP ${res.status}`);
        return res.text();
      })
      .then((body) => {
        const token = body.trim();
        if (token === '') throw new Error('empty answer');
        // Reconnects authenticate with the new token too.
        state.token = token;
        sendFrame({ type: 'refresh', token, ref: nextRef('refresh', '') });
      })
      .catch((e) => {
        // The token is not in `e`: only the status or the network error.
        showBanner('refresh', `Could not renew the session (${e.message}); it ends in ${left}.`);
      })
      .finally(() => {
        state.refreshing = false;
      });
  }

  function onRefreshed(f) {
    if (typeof f.ref === 'string') state.refs.delete(f.ref);
    hideBanner('refresh');
    if (Number.isFinite(f.exp) && f.exp > 0) {
      ui.status.title = `session valid until ${new Date(f.exp * 1000).toLocaleString()}`;
    }
  }

  function onError(f) {
    const code = typeof f.code === 'string' ? f.code : 'error';
    const message = typeof f.message === 'string' ? f.message : '';
    if (f.ref === AUTH_REF && code === 'bad_request' && state.ready) {
      // A gateway in anonymous mode: no token is needed, so a display name is.
      state.token = null;
      setTokenMode(false);
      showBanner('info', 'This gateway does not use sign-in tokens: pick a display name.');
      return;
    }
    if (f.ref === TYPING_REF) {
      // A notice nobody needs: never shown. A gateway without typing support says so once.
      if (code === 'unknown_type' || code === 'bad_request') state.typingUnsupported = true;
      return;
    }
    if (code === 'unauthorized' && (f.ref === AUTH_REF || !state.ready)) {
      // The token was refused (bad signature, expired, ...): the message says why.
      notAuthorized('unauthorized', `Not authorized: ${message || code}`);
      if (state.ws) state.ws.close(1000, 'unauthorized');
      return;
    }
    const info = typeof f.ref === 'string' ? state.refs.get(f.ref) : undefined;
    if (info) state.refs.delete(f.ref);
    if (info && info.kind === 'refresh') {
      showBanner('refresh', `Could not renew the session: ${message || code}`);
      return;
    }
    if (info && info.kind === 'members') {
      onMembersError(info, code);
      return;
    }
    const room = info ? state.rooms.get(info.room) : undefined;
    if (info && info.kind === 'join' && room) {
      if (code === 'already_joined') {
        setRoomState(room, 'joined');
        flushOutbox(room, true);
        return;
      }
      systemLine(room, 'error', `could not join ${room.name}: ${message || code}`);
      if (FATAL_JOIN_ERRORS.has(code)) {
        setRoomState(room, 'failed');
        saveRooms();
      } else {
        setRoomState(room, 'offline');
        if (code !== 'draining') {
          room.retry = setTimeout(() => {
            room.retry = null;
            if (state.ready && state.rooms.get(room.name) === room && room.state === 'offline') joinRoom(room);
          }, JOIN_RETRY_MS);
        }
      }
      return;
    }
    const out = info && info.kind === 'send' ? state.outbox.get(info.idem) : undefined;
    if (out && out.ref === f.ref) {
      out.ref = null;
      if (RETRY_SEND_ERRORS.has(code)) {
        // Nothing was published (or, after `unavailable`, maybe it was: the same idem key
        // makes the retry harmless). Try again when publishing works again.
        setOutgoingState(out, 'pending', code === 'unavailable' ? 'not sent yet, retrying…' : 'sending…');
        retrySendLater(out);
      } else if (code === 'draining') {
        // The connection closes; the message goes again once the room is rejoined.
      } else if (code === 'rejected') {
        // The publish hook refused it: the message says why.
        failSend(out, 'rejected', `not sent: ${message || code}`);
      } else {
        failSend(out, 'failed', `not sent (${code})${message ? `: ${message}` : ''}`);
      }
      return;
    }
    if (info && info.kind === 'send') {
      systemLine(room || null, 'error', `message not sent (${code}): ${message}`);
      return;
    }
    systemLine(null, 'error', `error (${code}): ${message}`);
  }

  // ---------- user actions ----------

  ui.joinForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    // jwt mode: the token names the user, no display name to check or remember (a saved
    // one still goes along, in case the gateway turns out to be anonymous).
    const n = state.token !== null ? { name: validName(ui.name.value).name || '' } : validName(ui.name.value);
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
    if (state.token === null) store(STORE_NAME, n.name);
    hideBanner('removed');
    addRoom(r.room, n.name, true);
    ui.room.value = '';
    ui.text.focus();
  });

  ui.sendForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const text = ui.text.value;
    if (text.trim() === '' || state.current === null) return;
    const room = state.rooms.get(state.current);
    if (!room) return;
    // A room we are in, or were in before the connection dropped (it is rejoined on
    // reconnect): the message waits in the outbox, shown as pending, until it is acked.
    const queued = room.state === 'joined' || (room.everJoined && room.state !== 'failed');
    if (!queued) {
      systemLine(room, 'error', 'not connected to this room yet; the message was not sent');
      return;
    }
    queueSend(room, text);
    ui.text.value = '';
  });

  ui.membersMore.addEventListener('click', () => {
    const room = currentRoom();
    if (room) requestMembers(room, false);
  });

  ui.membersReload.addEventListener('click', () => {
    const room = currentRoom();
    if (room) requestMembers(room, true);
  });

  ui.text.addEventListener('input', () => {
    const room = state.current === null ? null : state.rooms.get(state.current);
    if (room && ui.text.value.trim() !== '') sendTyping(room);
  });

  window.addEventListener('online', () => {
    if (state.ws === null && !state.stopped) connect();
  });

  // ---------- start ----------

  readFragment();
  if (state.token !== null) setTokenMode(true);
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
  if (state.token !== null && who.name === undefined) who.name = '';
  if (who.name !== undefined) {
    for (const r of savedRooms) addRoom(r, who.name, false);
    if (savedCurrent !== null && state.rooms.has(savedCurrent)) selectRoom(savedCurrent);
  }
  updateComposer();
  if (!ui.name.value && state.token === null) ui.name.focus();
  else ui.room.focus();
  connect();
})();
