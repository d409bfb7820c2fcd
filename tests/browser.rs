//! Browser tests of the chat page (`src/web`): a real headless Chromium driven through a
//! real chromedriver (WebDriver, `fantoccini`), against real gateways running in-process,
//! linked by a real `redis-server` when a scenario needs several replicas.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian packages `chromium` and
//! `chromium-driver`; override the paths with `ROOMCAST_CHROMIUM` / `ROOMCAST_CHROMEDRIVER`).
//! Without them these tests FAIL with a message saying so; they never skip silently.
//! Set `ROOMCAST_SCREENSHOT_DIR` to keep PNG screenshots of the pages.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Node, RedisServer, node_config};
use fantoccini::key::Key;
use fantoccini::wd::WindowHandle;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// How long to wait for anything the page should do. Generous: machines are noisy.
const WAIT: Duration = Duration::from_secs(45);
const POLL: Duration = Duration::from_millis(100);

// ---------------------------------------------------------------------------------------
// chromedriver + chromium
// ---------------------------------------------------------------------------------------

/// A chromedriver process (own process group, killed on drop) and the browser sessions it runs.
struct Browser {
    driver: Child,
    webdriver_url: String,
    dir: PathBuf,
    sessions: AtomicUsize,
}

fn tool_path(env: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(env).map_or_else(|| PathBuf::from(default), PathBuf::from);
    assert!(
        path.is_file(),
        "{} not found: the browser tests need Chromium and chromedriver \
         (Debian: `apt-get install -y chromium chromium-driver`, or set {env})",
        path.display()
    );
    path
}

fn fresh_dir(what: &str) -> PathBuf {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "roomcast-{what}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free loopback port")
        .port()
}

impl Browser {
    async fn start() -> Browser {
        let chromedriver = tool_path("ROOMCAST_CHROMEDRIVER", "/usr/bin/chromedriver");
        tool_path("ROOMCAST_CHROMIUM", "/usr/bin/chromium");
        let dir = fresh_dir("browser");
        let port = free_port();
        let log = dir.join("chromedriver.log");
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, so that drop can kill chromedriver and every Chromium
            // it started, even when a test panics before closing its sessions.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver.display()));
        let mut browser = Browser {
            driver,
            webdriver_url: format!("http://127.0.0.1:{port}"),
            dir,
            sessions: AtomicUsize::new(0),
        };
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                break;
            }
            if let Ok(Some(status)) = browser.driver.try_wait() {
                panic!(
                    "chromedriver exited with {status} before listening; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver did not listen on port {port}"
            );
            tokio::time::sleep(POLL).await;
        }
        browser
    }

    /// A new browser (own profile, so own localStorage) showing `url`.
    async fn open(&self, url: &str) -> Page {
        let n = self.sessions.fetch_add(1, Ordering::Relaxed);
        let profile = self.dir.join(format!("profile-{n}"));
        std::fs::create_dir_all(&profile).expect("create profile dir");
        let chromium = tool_path("ROOMCAST_CHROMIUM", "/usr/bin/chromium");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-dev-shm-usage",
                    "--window-size=1200,800",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }),
        );
        // Leave alerts open, so that a test can see one (and any command fails while it is).
        caps.insert("unhandledPromptBehavior".into(), json!("ignore"));
        let client = ClientBuilder::native()
            .capabilities(caps)
            .connect(&self.webdriver_url)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start a Chromium session through chromedriver: {e}; log:\n{}",
                    std::fs::read_to_string(self.dir.join("chromedriver.log")).unwrap_or_default()
                )
            });
        let page = Page {
            client,
            label: format!("page {n}"),
        };
        page.goto(url).await;
        page
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(pid) = self.driver.id() {
            // Kill the whole process group (chromedriver and its Chromiums).
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.driver.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------
// One page (one browser session)
// ---------------------------------------------------------------------------------------

struct Page {
    client: Client,
    label: String,
}

/// One `.msg` line of `#messages`.
#[derive(Debug, Clone, PartialEq)]
struct Line {
    id: String,
    from: String,
    text: String,
}

impl Page {
    async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("{}: cannot load {url}: {e}", self.label));
    }

    /// Runs `script` (a function body; `arguments[0]` is `arg`) in the page.
    async fn js(&self, script: &str, arg: Value) -> Value {
        self.client
            .execute(script, vec![arg])
            .await
            .unwrap_or_else(|e| panic!("{}: script failed: {e}\n{script}", self.label))
    }

    /// Polls `script` until it returns something other than null/false/""; returns that.
    async fn wait_for(&self, what: &str, script: &str, arg: Value) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let v = self.js(script, arg.clone()).await;
            let done = !matches!(v, Value::Null | Value::Bool(false))
                && v.as_str().is_none_or(|s| !s.is_empty());
            if done {
                return v;
            }
            if tokio::time::Instant::now() >= deadline {
                self.screenshot(&format!("timeout-{}", self.label.replace(' ', "-")))
                    .await;
                panic!(
                    "{}: timed out waiting for {what}; last value {v}; page text:\n{}",
                    self.label,
                    self.js("return document.body.innerText", Value::Null)
                        .await
                        .as_str()
                        .unwrap_or_default()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{}: no element {css}: {e}", self.label))
    }

    async fn type_into(&self, css: &str, text: &str) {
        let input = self.find(css).await;
        input.clear().await.expect("clear input");
        input.send_keys(text).await.expect("type into input");
    }

    /// Waits until the page says it is connected and shows a node id; returns the node id.
    async fn wait_disconnected(&self) {
        self.wait_for(
            "the page to notice the disconnect",
            "return document.getElementById('status').dataset.state !== 'connected';",
            Value::Null,
        )
        .await;
    }

    async fn wait_connected(&self) -> String {
        self.wait_for(
            "the connection",
            "const s = document.getElementById('status');
             const n = document.getElementById('node').textContent.trim();
             return s.dataset.state === 'connected' && n !== '–' && n !== '' ? n : null;",
            Value::Null,
        )
        .await
        .as_str()
        .expect("node id is a string")
        .to_owned()
    }

    /// Joins `room` as `name` through the form and waits until the server confirmed it.
    async fn join(&self, name: &str, room: &str) {
        self.type_into("#name", name).await;
        self.type_into("#room", room).await;
        self.find("#join").await.click().await.expect("click #join");
        self.wait_joined(room).await;
    }

    async fn wait_joined(&self, room: &str) {
        self.wait_for(
            &format!("room {room} to be joined"),
            "const t = document.querySelector(`.room-tab[data-room=\"${arguments[0]}\"]`);
             return t !== null && t.dataset.state === 'joined';",
            json!(room),
        )
        .await;
    }

    async fn select_room(&self, room: &str) {
        self.find(&format!(".room-tab[data-room=\"{room}\"]"))
            .await
            .click()
            .await
            .expect("click room tab");
    }

    /// Types `text` in the message box and presses Enter.
    async fn send(&self, text: &str) {
        let input = self.find("#text").await;
        input.send_keys(text).await.expect("type message");
        input
            .send_keys(&Key::Enter.to_string())
            .await
            .expect("press Enter");
    }

    /// The message lines of the current room.
    async fn lines(&self) -> Vec<Line> {
        let v = self
            .js(
                "return [...document.querySelectorAll('#messages .msg')].map(m => ({
                   id: m.dataset.id,
                   from: m.querySelector('.from').textContent,
                   text: m.querySelector('.text').textContent,
                 }));",
                Value::Null,
            )
            .await;
        v.as_array()
            .expect("array of lines")
            .iter()
            .map(|l| Line {
                id: l["id"].as_str().unwrap_or_default().to_owned(),
                from: l["from"].as_str().unwrap_or_default().to_owned(),
                text: l["text"].as_str().unwrap_or_default().to_owned(),
            })
            .collect()
    }

    /// Waits until the current room shows a message `text` from `from`.
    async fn wait_message(&self, from: &str, text: &str) {
        self.wait_for(
            &format!("message {text:?} from {from}"),
            "return [...document.querySelectorAll('#messages .msg')].some(m =>
               m.querySelector('.from').textContent === arguments[0].from &&
               m.querySelector('.text').textContent === arguments[0].text);",
            json!({ "from": from, "text": text }),
        )
        .await;
    }

    /// Waits until the current room shows a system line of `kind` whose text is `text`.
    async fn wait_system_line(&self, kind: &str, text: &str) {
        self.wait_for(
            &format!("{kind} line {text:?}"),
            "return [...document.querySelectorAll(`#messages .sys[data-kind=\"${arguments[0].kind}\"]`)]
               .some(l => l.querySelector('.sys-text').textContent === arguments[0].text);",
            json!({ "kind": kind, "text": text }),
        )
        .await;
    }

    /// Waits until the member list shows `name` with `count` connections (0: not listed).
    async fn wait_member(&self, name: &str, count: usize) {
        self.wait_for(
            &format!("member {name} x{count}"),
            "const li = [...document.querySelectorAll('#members .member')]
               .find(m => m.dataset.name === arguments[0].name);
             return arguments[0].count === 0 ? li === undefined
               : li !== undefined && li.dataset.count === String(arguments[0].count);",
            json!({ "name": name, "count": count }),
        )
        .await;
    }

    /// Saves a PNG screenshot when `ROOMCAST_SCREENSHOT_DIR` is set.
    async fn screenshot(&self, name: &str) {
        let Some(dir) = std::env::var_os("ROOMCAST_SCREENSHOT_DIR") else {
            return;
        };
        if let Ok(png) = self.client.screenshot().await {
            let _ = std::fs::create_dir_all(&dir);
            let _ = std::fs::write(Path::new(&dir).join(format!("{name}.png")), png);
        }
    }

    async fn close(self) {
        let _ = self.client.close().await;
    }
}

// ---------------------------------------------------------------------------------------
// A TCP balancer in front of the gateways, to cut connections and move the page to
// another replica like a load balancer would.
// ---------------------------------------------------------------------------------------

struct Balancer {
    addr: SocketAddr,
    state: Arc<Mutex<(Option<SocketAddr>, CancellationToken)>>,
    stop: CancellationToken,
}

impl Balancer {
    async fn start(upstream: SocketAddr) -> Balancer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind balancer");
        let addr = listener.local_addr().expect("balancer address");
        let state = Arc::new(Mutex::new((Some(upstream), CancellationToken::new())));
        let stop = CancellationToken::new();
        let (st, stop2) = (state.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stop2.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((mut client, _)) = accepted else {
                    continue;
                };
                let (upstream, cut) = {
                    let s = st.lock().expect("balancer state");
                    (s.0, s.1.clone())
                };
                // No upstream: the connection is dropped at once (the replica is "down").
                let Some(upstream) = upstream else { continue };
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = cut.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    }
                });
            }
        });
        Balancer { addr, state, stop }
    }

    fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Drops every open connection and sends new ones to `upstream` (None: refuse them).
    fn route(&self, upstream: Option<SocketAddr>) {
        let mut s = self.state.lock().expect("balancer state");
        s.1.cancel();
        *s = (upstream, CancellationToken::new());
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.stop.cancel();
        self.route(None);
    }
}

/// What most tests here start with: Redis, two replicas on it ("node-a", "node-b") and a
/// browser. Fields drop in order: the browser first, Redis last.
struct TwoReplicas {
    browser: Browser,
    node_a: Node,
    node_b: Node,
    _redis: RedisServer,
}

impl TwoReplicas {
    async fn start() -> TwoReplicas {
        TwoReplicas::start_with(|_| {}).await
    }

    /// Both replicas with `tweak` applied to their configuration.
    async fn start_with(tweak: fn(&mut roomcast::Config)) -> TwoReplicas {
        let redis = RedisServer::start().await;
        let config = |id: &str| {
            let mut cfg = node_config(Some(&redis), id);
            tweak(&mut cfg);
            cfg
        };
        let node_a = Node::start(config("node-a")).await;
        let node_b = Node::start(config("node-b")).await;
        TwoReplicas {
            browser: Browser::start().await,
            node_a,
            node_b,
            _redis: redis,
        }
    }

    /// One page on each replica: (node-a's, node-b's).
    async fn pages(&self) -> (Page, Page) {
        let a = self.browser.open(&page_url(&self.node_a)).await;
        let b = self.browser.open(&page_url(&self.node_b)).await;
        (a, b)
    }

    /// A page behind a balancer that routes to node-a (and can be cut or rerouted), and a
    /// page on node-b.
    async fn balanced_pages(&self) -> (Balancer, Page, Page) {
        let balancer = Balancer::start(socket_addr(&self.node_a)).await;
        let a = self.browser.open(&balancer.url()).await;
        let b = self.browser.open(&page_url(&self.node_b)).await;
        (balancer, a, b)
    }
}

fn page_url(node: &Node) -> String {
    format!("{}/", node.http_url.trim_end_matches('/'))
}

fn socket_addr(node: &Node) -> SocketAddr {
    node.http_url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .expect("http_url is http://IP:PORT")
}

fn assert_unique_ids(lines: &[Line]) {
    let mut ids: Vec<&str> = lines.iter().map(|l| l.id.as_str()).collect();
    ids.sort_unstable();
    let before = ids.len();
    ids.dedup();
    assert_eq!(before, ids.len(), "a message id is shown twice: {lines:?}");
}

// ---------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn pages_on_two_replicas_see_each_others_messages_and_their_own_node() {
    let env = TwoReplicas::start().await;
    let (alice, bob) = env.pages().await;

    assert_eq!(alice.wait_connected().await, "node-a");
    assert_eq!(bob.wait_connected().await, "node-b");

    alice.join("alice", "lobby").await;
    bob.join("bob", "lobby").await;
    alice.send("hello from alice").await;
    bob.send("hello from bob").await;
    for page in [&alice, &bob] {
        page.wait_message("alice", "hello from alice").await;
        page.wait_message("bob", "hello from bob").await;
    }

    // A second room: its messages stay in its own tab.
    alice.join("alice", "dev").await;
    bob.join("bob", "dev").await;
    bob.send("only in dev").await;
    alice.wait_message("bob", "only in dev").await;
    let dev = alice.lines().await;
    assert!(
        dev.iter().all(|l| l.text != "hello from alice"),
        "lobby's message shows in dev: {dev:?}"
    );
    alice.select_room("lobby").await;
    alice.wait_message("bob", "hello from bob").await;
    let lobby = alice.lines().await;
    assert!(
        lobby.iter().all(|l| l.text != "only in dev"),
        "dev's message shows in lobby: {lobby:?}"
    );
    assert_unique_ids(&lobby);
    // Names are colored with the server's color.
    let colored = alice
        .js(
            "return [...document.querySelectorAll('#messages .msg .from')].every(f => f.style.color !== '');",
            Value::Null,
        )
        .await;
    assert_eq!(
        colored,
        json!(true),
        "message names carry the server's color"
    );

    alice.screenshot("two-replicas-alice").await;
    bob.screenshot("two-replicas-bob").await;
    alice.close().await;
    bob.close().await;
}

/// The page is built on the client library: it loads the library's modules from
/// `/roomcast-client/` (the committed `tsc` build of `clients/js`), the bytes served are
/// that build's, and the page's own script opens no WebSocket itself.
#[tokio::test]
async fn page_runs_on_the_client_library() {
    let env = TwoReplicas::start().await;
    let (alice, bob) = env.pages().await;
    bob.close().await;
    alice.join("alice", "lib").await;
    let loaded = alice
        .js(
            "return performance.getEntriesByType('resource')
                 .map(e => new URL(e.name).pathname)
                 .filter(p => p.startsWith('/roomcast-client/'));",
            Value::Null,
        )
        .await;
    for module in ["index.js", "client.js", "room.js", "protocol.js"] {
        assert!(
            loaded
                .as_array()
                .is_some_and(|l| l.contains(&json!(format!("/roomcast-client/{module}")))),
            "the page did not load the library's {module}: {loaded}"
        );
    }
    let served = alice
        .js(
            "return Promise.all(['/roomcast-client/client.js', '/app.js'].map(
                 u => fetch(u).then(r => r.text())));",
            Value::Null,
        )
        .await;
    let committed = include_str!("../src/web/roomcast-client/client.js");
    assert_eq!(
        served[0],
        json!(committed),
        "the served library is the committed build"
    );
    let app = served[1].as_str().expect("app.js text");
    assert!(
        !app.contains("new WebSocket") && app.contains("from './roomcast-client/index.js'"),
        "app.js imports the library and opens no socket of its own"
    );
    alice.close().await;
}

#[tokio::test]
async fn message_with_html_is_shown_as_text() {
    const EVIL: &str = "<img src=x onerror=alert(1)>";
    let env = TwoReplicas::start().await;
    let (sender, reader) = env.pages().await;
    sender.join("mallory", "lobby").await;
    reader.join("reader", "lobby").await;

    sender.send(EVIL).await;
    // A message after it: once it is shown, an injected image has had every chance to load.
    sender.send("after").await;
    for page in [&sender, &reader] {
        page.wait_message("mallory", "after").await;
        let lines = page.lines().await;
        assert!(
            lines.iter().any(|l| l.from == "mallory" && l.text == EVIL),
            "{}: the message is not shown as its literal text: {lines:?}",
            page.label
        );
        let images = page
            .js(
                "return document.querySelectorAll('#messages img').length;",
                Value::Null,
            )
            .await;
        assert_eq!(
            images,
            json!(0),
            "{}: the message became markup",
            page.label
        );
        match page.client.get_alert_text().await {
            Err(e) if e.is_no_such_alert() => {}
            Ok(text) => panic!("{}: an alert is open: {text:?}", page.label),
            Err(e) => panic!("{}: cannot check for alerts: {e}", page.label),
        }
    }
    sender.close().await;
    reader.close().await;
}

#[tokio::test]
async fn presence_lines_appear_when_another_page_joins_and_leaves() {
    let env = TwoReplicas::start().await;
    let (alice, bob) = env.pages().await;

    alice.join("alice", "lobby").await;
    alice.wait_member("alice", 1).await;
    bob.join("bob", "lobby").await;

    alice.wait_system_line("presence", "bob joined").await;
    alice.wait_member("bob", 1).await;
    bob.wait_member("alice", 1).await;
    bob.wait_member("bob", 1).await;

    bob.find(".room-leave[data-room=\"lobby\"]")
        .await
        .click()
        .await
        .expect("click leave");
    alice.wait_system_line("presence", "bob left").await;
    alice.wait_member("bob", 0).await;
    alice.close().await;
    bob.close().await;
}

#[tokio::test]
async fn member_list_counts_connections_sharing_a_name() {
    let env = TwoReplicas::start().await;
    let (alice, bob) = env.pages().await;
    alice.join("alice", "lobby").await;
    bob.join("bob", "lobby").await;
    alice.wait_member("bob", 1).await;

    // A second tab of bob's browser (same origin, so same localStorage): it restores the
    // name and rooms and joins as bob again.
    let first_tab: WindowHandle = bob.client.window().await.expect("current window");
    let tab = bob.client.new_window(true).await.expect("open a tab");
    bob.client
        .switch_to_window(tab.handle.clone())
        .await
        .expect("switch tab");
    bob.goto(&page_url(&env.node_b)).await;
    bob.wait_joined("lobby").await;
    let name = bob
        .js("return document.getElementById('name').value;", Value::Null)
        .await;
    assert_eq!(name, json!("bob"), "the name is restored from localStorage");

    alice.wait_member("bob", 2).await;
    let shown = alice
        .js(
            "return document.querySelector('#members .member[data-name=\"bob\"]').textContent;",
            Value::Null,
        )
        .await;
    assert!(
        shown.as_str().is_some_and(|s| s.contains('2')),
        "the count is visible: {shown}"
    );
    alice.screenshot("members-alice").await;

    bob.client.close_window().await.expect("close the tab");
    bob.client
        .switch_to_window(first_tab)
        .await
        .expect("back to the first tab");
    alice.wait_member("bob", 1).await;
    alice.close().await;
    bob.close().await;
}

#[tokio::test]
async fn page_reconnects_to_another_replica_and_resumes_without_gap_or_duplicate() {
    let env = TwoReplicas::start().await;
    let (balancer, alice, bob) = env.balanced_pages().await;
    assert_eq!(alice.wait_connected().await, "node-a");
    alice.join("alice", "lobby").await;
    bob.join("bob", "lobby").await;
    bob.send("before").await;
    alice.wait_message("bob", "before").await;

    // node-a's connection is cut and refused for a while; bob talks meanwhile.
    balancer.route(None);
    alice.wait_disconnected().await;
    bob.send("while away 1").await;
    bob.send("while away 2").await;
    bob.wait_message("bob", "while away 2").await;

    // The balancer now sends the page to node-b: it must resume the room from its cursor.
    balancer.route(Some(socket_addr(&env.node_b)));
    assert_eq!(alice.wait_connected().await, "node-b");
    alice.wait_joined("lobby").await;
    bob.send("after").await;
    alice.wait_message("bob", "after").await;

    let lines = alice.lines().await;
    let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
    assert_eq!(
        texts,
        ["before", "while away 1", "while away 2", "after"],
        "every message exactly once, in order"
    );
    assert_unique_ids(&lines);
    let missed = alice
        .js(
            "return document.querySelectorAll('#messages .sys[data-kind=\"missed\"]').length;",
            Value::Null,
        )
        .await;
    assert_eq!(missed, json!(0), "nothing was lost, so no 'missed' line");
    alice.close().await;
    bob.close().await;
}

#[tokio::test]
async fn page_says_messages_were_missed_when_history_lost_its_cursor() {
    let env = TwoReplicas::start_with(|cfg| cfg.history.size = 2).await;
    let (balancer, alice, bob) = env.balanced_pages().await;
    alice.join("alice", "lobby").await;
    bob.join("bob", "lobby").await;
    bob.send("before").await;
    alice.wait_message("bob", "before").await;

    balancer.route(None);
    alice.wait_disconnected().await;
    // Three messages push "before" (alice's cursor) out of a history of two.
    for text in ["away 1", "away 2", "away 3"] {
        bob.send(text).await;
    }
    bob.wait_message("bob", "away 3").await;

    balancer.route(Some(socket_addr(&env.node_b)));
    alice.wait_connected().await;
    alice
        .wait_system_line("missed", "some messages may have been missed")
        .await;
    alice.wait_message("bob", "away 3").await;
    let lines = alice.lines().await;
    let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
    assert_eq!(
        texts,
        ["before", "away 2", "away 3"],
        "what history still had"
    );
    alice.close().await;
    bob.close().await;
}

// ---------------------------------------------------------------------------------------
// jwt mode (`auth.mode = "jwt"`): the page takes its token from the URL fragment
// ---------------------------------------------------------------------------------------

const JWT_SECRET: &str = "browser-test-secret-of-32-bytes!";

#[derive(serde::Serialize, serde::Deserialize)]
struct NameClaim {
    name: String,
}

/// A connection token for `sub` named `name`, valid for `ttl_s` seconds, signed with `secret`.
fn jwt(secret: &str, sub: &str, name: &str, ttl_s: u64) -> String {
    use jwt_simple::prelude::{self as js, MACLike};
    let claims = js::Claims::with_custom_claims(
        NameClaim { name: name.into() },
        js::Duration::from_secs(ttl_s),
    )
    .with_subject(sub);
    js::HS256Key::from_bytes(secret.as_bytes())
        .authenticate(claims)
        .expect("sign")
}

fn jwt_mode(cfg: &mut roomcast::Config) {
    cfg.auth.mode = roomcast::config::AuthMode::Jwt;
    cfg.auth.jwt.secret = Some(JWT_SECRET.into());
    cfg.auth.jwt.leeway = Duration::ZERO;
    cfg.auth.timeout = Duration::from_secs(2);
    cfg.auth.refresh_notice = Duration::from_secs(3);
}

impl Page {
    /// Joins `room` through the form without touching the name (jwt mode: it is hidden).
    async fn join_room(&self, room: &str) {
        self.type_into("#room", room).await;
        self.find("#join").await.click().await.expect("click #join");
        self.wait_joined(room).await;
    }

    /// Waits until the banner shows (kind `kind`); returns its text.
    async fn wait_banner(&self, kind: &str) -> String {
        self.wait_for(
            &format!("a {kind} banner"),
            "const b = document.getElementById('banner');
             return !b.hidden && b.offsetHeight > 0 && b.dataset.kind === arguments[0]
               ? b.textContent : null;",
            json!(kind),
        )
        .await
        .as_str()
        .expect("banner text")
        .to_owned()
    }

    /// From now on, counts the WebSockets the page opens in `window.__sockets`.
    async fn count_sockets(&self) {
        self.js(
            "window.__sockets = 0;
             const Real = window.WebSocket;
             window.WebSocket = function (...args) { window.__sockets += 1; return new Real(...args); };
             window.WebSocket.prototype = Real.prototype;
             Object.assign(window.WebSocket, { CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3 });",
            Value::Null,
        )
        .await;
    }
}

#[tokio::test]
async fn jwt_page_joins_with_the_token_name_not_the_typed_one_and_lists_it() {
    let env = TwoReplicas::start_with(jwt_mode).await;
    let alice_token = jwt(JWT_SECRET, "u-alice", "Alice", 300);
    let alice = env
        .browser
        .open(&format!("{}#token={alice_token}", page_url(&env.node_a)))
        .await;
    let bob = env
        .browser
        .open(&format!(
            "{}#token={}",
            page_url(&env.node_b),
            jwt(JWT_SECRET, "u-bob", "Bob", 300)
        ))
        .await;
    assert_eq!(alice.wait_connected().await, "node-a");
    assert_eq!(bob.wait_connected().await, "node-b");

    // The token left the address bar, and the name field is not offered.
    let href = alice.js("return window.location.href;", Value::Null).await;
    let href = href.as_str().unwrap_or_default();
    assert!(
        !href.contains("token") && !href.contains(&alice_token),
        "the token is still in the address bar: {href}"
    );
    let name_shown = alice
        .js(
            "return document.getElementById('name').offsetParent !== null;",
            Value::Null,
        )
        .await;
    assert_eq!(
        name_shown,
        json!(false),
        "the name field is shown in jwt mode"
    );

    // Whatever sits in the name field goes along with `join`; the server ignores it.
    alice
        .js(
            "document.getElementById('name').value = 'Mallory';",
            Value::Null,
        )
        .await;
    alice.join_room("lobby").await;
    bob.join_room("lobby").await;
    alice
        .wait_system_line("joined", "You joined lobby as Alice")
        .await;
    let identity = alice
        .wait_for(
            "the claimed name next to 'Signed in as'",
            "const i = document.getElementById('identity');
             return i.offsetParent !== null ? i.textContent.replace(/\\s+/g, ' ').trim() : null;",
            Value::Null,
        )
        .await;
    assert_eq!(identity, json!("Signed in as Alice"));

    alice.send("hello from alice").await;
    for page in [&alice, &bob] {
        page.wait_message("Alice", "hello from alice").await;
        page.wait_member("Alice", 1).await;
        page.wait_member("Bob", 1).await;
        page.wait_member("Mallory", 0).await;
        let froms: Vec<String> = page.lines().await.into_iter().map(|l| l.from).collect();
        assert!(
            froms.iter().all(|f| f != "Mallory"),
            "{}: the typed name shows: {froms:?}",
            page.label
        );
    }
    let id = bob
        .js(
            "return document.querySelector('#members .member[data-name=\"Alice\"]').dataset.id;",
            Value::Null,
        )
        .await;
    assert_eq!(id, json!("u-alice"), "members carry the token's sub");

    alice.screenshot("jwt-alice").await;
    bob.screenshot("jwt-bob").await;
    alice.close().await;
    bob.close().await;
}

#[tokio::test]
async fn jwt_page_with_a_bad_or_no_token_shows_not_authorized_and_stops_reconnecting() {
    let env = TwoReplicas::start_with(jwt_mode).await;
    let forged = jwt("another-secret-of-32-bytes-long!", "u-eve", "Eve", 300);
    let eve = env
        .browser
        .open(&format!("{}#token={forged}", page_url(&env.node_a)))
        .await;
    let text = eve.wait_banner("unauthorized").await;
    assert!(
        text.starts_with("Not authorized: ") && text.contains("signature"),
        "{text}"
    );
    assert!(!text.contains(&forged), "the token is shown: {text}");
    eve.screenshot("jwt-unauthorized").await;

    // No token at all: the gateway closes with 4001 after `auth.timeout`.
    let anon = env.browser.open(&page_url(&env.node_b)).await;
    let text = anon.wait_banner("unauthorized").await;
    assert!(text.starts_with("Not authorized: "), "{text}");

    // Neither page tries again: reconnecting with the same token is pointless.
    for page in [&eve, &anon] {
        page.count_sockets().await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for page in [&eve, &anon] {
        let opened = page.js("return window.__sockets;", Value::Null).await;
        assert_eq!(opened, json!(0), "{}: reconnected", page.label);
        let status = page
            .js(
                "return document.getElementById('status').dataset.state;",
                Value::Null,
            )
            .await;
        assert_eq!(status, json!("stopped"), "{}", page.label);
    }
    eve.close().await;
    anon.close().await;
}

#[tokio::test]
async fn jwt_page_renews_its_token_from_the_refresh_url_on_expiring() {
    let env = TwoReplicas::start_with(jwt_mode).await;
    // Expiring comes 3 s before exp: at about 7 s.
    let minted = tokio::time::Instant::now();
    let first = jwt(JWT_SECRET, "u-dan", "Dan", 10);
    let dan = env
        .browser
        .open(&format!(
            "{}#token={first}&refresh=%2Fauth%2Ftoken%3Ffor%3Ddan",
            page_url(&env.node_a)
        ))
        .await;
    // The refresh endpoint: the page's fetch, answered here with a fresh token.
    dan.js(
        "window.__refreshes = [];
         const fresh = arguments[0];
         window.fetch = (url, init) => {
           window.__refreshes.push({ url: String(url), credentials: init && init.credentials });
           return Promise.resolve(new Response(`  ${fresh}\\n`, { status: 200 }));
         };",
        json!(jwt(JWT_SECRET, "u-dan", "Dan", 300)),
    )
    .await;
    dan.wait_connected().await;
    dan.join_room("lobby").await;
    dan.wait_for(
        "the refresh to be accepted",
        "return document.getElementById('status').title.startsWith('session valid until');",
        Value::Null,
    )
    .await;
    let calls = dan.js("return window.__refreshes;", Value::Null).await;
    let calls = calls.as_array().expect("calls");
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(
        calls[0]["url"]
            .as_str()
            .is_some_and(|u| u.ends_with("/auth/token?for=dan")),
        "{calls:?}"
    );
    assert_eq!(calls[0]["credentials"], "same-origin");

    // Past the first token's exp, the page is still connected and chats.
    tokio::time::sleep_until(minted + Duration::from_secs(12)).await;
    let status = dan
        .js(
            "return document.getElementById('status').dataset.state;",
            Value::Null,
        )
        .await;
    assert_eq!(status, json!("connected"));
    dan.send("still here").await;
    dan.wait_message("Dan", "still here").await;
    let banner = dan
        .js(
            "return document.getElementById('banner').hidden;",
            Value::Null,
        )
        .await;
    assert_eq!(banner, json!(true), "a banner shows");
    dan.close().await;
}

#[tokio::test]
async fn jwt_page_says_the_session_expired_when_the_token_lapses_and_stops() {
    let env = TwoReplicas::start_with(jwt_mode).await;
    let page = env
        .browser
        .open(&format!(
            "{}#token={}",
            page_url(&env.node_a),
            jwt(JWT_SECRET, "u-fay", "Fay", 5)
        ))
        .await;
    page.wait_connected().await;
    page.join_room("lobby").await;
    // Without a refresh URL the page warns, then the gateway closes with 4002 at exp.
    let warning = page.wait_banner("refresh").await;
    assert!(warning.starts_with("Your session ends in"), "{warning}");
    let text = page.wait_banner("expired").await;
    assert!(text.starts_with("Session expired"), "{text}");
    page.count_sockets().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let opened = page.js("return window.__sockets;", Value::Null).await;
    assert_eq!(opened, json!(0), "reconnected after 4002");
    page.screenshot("jwt-expired").await;
    page.close().await;
}

// ---------------------------------------------------------------------------------------
// Recent history on join, typing notices, idempotent sends, refused messages
// ---------------------------------------------------------------------------------------

/// Script: the text of the page's typing notice (`#typing`, empty when nobody types).
const TYPING_NOTICE: &str = "return document.getElementById('typing').textContent;";

impl Page {
    /// The texts of the current room's message lines, in page order.
    async fn texts(&self) -> Vec<String> {
        self.lines().await.into_iter().map(|l| l.text).collect()
    }

    /// Types `text` into the message box without sending it.
    async fn type_message(&self, text: &str) {
        self.find("#text")
            .await
            .send_keys(text)
            .await
            .expect("type into #text");
    }

    /// Waits until the typing notice reads `text` ("" once nobody types).
    async fn wait_typing(&self, text: &str) {
        self.wait_for(
            &format!("the typing notice {text:?}"),
            "return document.getElementById('typing').textContent === arguments[0];",
            json!(text),
        )
        .await;
    }

    /// From now on, records every text the typing notice shows in `window.__typingSeen`.
    async fn watch_typing(&self) {
        self.js(
            "window.__typingSeen = [];
             const el = document.getElementById('typing');
             new MutationObserver(() => {
               if (el.textContent !== '') window.__typingSeen.push(el.textContent);
             }).observe(el, { childList: true, characterData: true, subtree: true });",
            Value::Null,
        )
        .await;
    }

    /// Our own messages not confirmed yet: `[{state, text, note}]`.
    async fn outgoing(&self) -> Value {
        self.js(
            "return [...document.querySelectorAll('#messages .outgoing')].map(l => ({
               state: l.dataset.state,
               text: l.querySelector('.text').textContent,
               note: l.querySelector('.send-state').textContent,
             }));",
            Value::Null,
        )
        .await
    }

    /// From now on, records the frames the page sends (`window.__sent`) and the acks it
    /// receives (`window.__acks`), and hides acks from the page while `window.__dropAcks`
    /// is true: as if the connection broke after the server published, before the ack.
    async fn spy_on_frames(&self, drop_acks: bool) {
        self.js(
            "window.__sent = [];
             window.__acks = [];
             window.__dropAcks = arguments[0];
             const send = WebSocket.prototype.send;
             WebSocket.prototype.send = function (data) {
               try { window.__sent.push(JSON.parse(data)); } catch (_) {}
               return send.call(this, data);
             };
             const data = Object.getOwnPropertyDescriptor(MessageEvent.prototype, 'data').get;
             const dropped = new WeakMap();
             Object.defineProperty(MessageEvent.prototype, 'data', {
               configurable: true,
               get() {
                 const d = data.call(this);
                 if (typeof d !== 'string' || !d.includes('\"type\":\"ack\"')) return d;
                 if (!dropped.has(this)) {
                   dropped.set(this, window.__dropAcks);
                   window.__acks.push({ dropped: window.__dropAcks, ...JSON.parse(d) });
                 }
                 return dropped.get(this) ? null : d;
               },
             });",
            json!(drop_acks),
        )
        .await;
    }
}

#[tokio::test]
async fn entering_a_room_shows_recent_messages() {
    let env = TwoReplicas::start().await;
    let (alice, bob) = env.pages().await;
    alice.join("alice", "lobby").await;
    for text in ["one", "two", "three"] {
        alice.send(text).await;
        alice.wait_message("alice", text).await;
    }

    // bob enters the room (on the other replica) after the conversation started.
    bob.join("bob", "lobby").await;
    bob.wait_message("alice", "three").await;
    assert_eq!(
        bob.texts().await,
        ["one", "two", "three"],
        "the recent messages, in order, once"
    );
    // They are shown as history: flagged, above the line saying bob joined.
    let layout = bob
        .js(
            "return [...document.querySelectorAll('#messages .msg, #messages .sys[data-kind=\"joined\"]')]
               .map(l => l.classList.contains('msg') ? `${l.dataset.replay}:${l.querySelector('.text').textContent}` : 'joined');",
            Value::Null,
        )
        .await;
    assert_eq!(
        layout,
        json!(["true:one", "true:two", "true:three", "joined"]),
        "history is flagged and comes before 'You joined'"
    );

    // Live messages follow, without a duplicate of the history.
    alice.send("four").await;
    bob.wait_message("alice", "four").await;
    let lines = bob.lines().await;
    let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
    assert_eq!(texts, ["one", "two", "three", "four"]);
    assert_unique_ids(&lines);
    bob.screenshot("history-bob").await;
    alice.close().await;
    bob.close().await;
}

#[tokio::test]
async fn entering_a_room_shows_at_most_its_last_50_messages() {
    let env = TwoReplicas::start().await;
    // 60 messages, more than the page asks for, fewer than the room keeps (history.size).
    let mut carol = env.node_a.client().await;
    carol.join("lobby", "carol").await;
    let texts: Vec<String> = (1..=60).map(|i| format!("m{i}")).collect();
    carol.send_many("lobby", &texts).await;

    let bob = env.browser.open(&page_url(&env.node_b)).await;
    bob.join("bob", "lobby").await;
    bob.wait_message("carol", "m60").await;
    carol.send("lobby", "live").await;
    bob.wait_message("carol", "live").await;
    let shown = bob.texts().await;
    let mut expected: Vec<String> = (11..=60).map(|i| format!("m{i}")).collect();
    expected.push("live".into());
    assert_eq!(shown, expected, "the last 50, in order, then live ones");
    bob.close().await;
}

#[tokio::test]
async fn typing_shows_in_the_other_page_and_hides() {
    let env = TwoReplicas::start().await;
    let (alice, bob) = env.pages().await;
    alice.join("alice", "lobby").await;
    bob.join("bob", "lobby").await;
    alice.wait_member("bob", 1).await;
    bob.wait_member("alice", 1).await;
    alice.watch_typing().await;

    // alice types without sending: bob sees it, then (no more keys) it goes by itself.
    alice.type_message("hel").await;
    bob.wait_typing("alice is typing…").await;
    bob.screenshot("typing-bob").await;
    bob.wait_typing("").await;

    // She types again, then sends: the notice goes with her message, not 3 s later.
    alice.type_message("lo").await;
    bob.wait_typing("alice is typing…").await;
    alice
        .find("#text")
        .await
        .send_keys(&Key::Enter.to_string())
        .await
        .expect("press Enter");
    let notice_when_shown = bob
        .wait_for(
            "alice's message",
            "const shown = [...document.querySelectorAll('#messages .msg')]
               .some(m => m.querySelector('.text').textContent === 'hello');
             return shown ? { notice: document.getElementById('typing').textContent } : null;",
            Value::Null,
        )
        .await;
    assert_eq!(
        notice_when_shown,
        json!({ "notice": "" }),
        "the notice outlived alice's message"
    );

    // alice never saw a notice about herself.
    alice.wait_message("alice", "hello").await;
    let own = alice.js("return window.__typingSeen;", Value::Null).await;
    assert_eq!(own, json!([]), "alice was shown her own typing");
    let notice = alice.js(TYPING_NOTICE, Value::Null).await;
    assert_eq!(notice, json!(""));
    alice.close().await;
    bob.close().await;
}

#[tokio::test]
async fn typing_notice_names_everyone_typing() {
    let env = TwoReplicas::start().await;
    let (alice, bob) = env.pages().await;
    let carol = env.browser.open(&page_url(&env.node_a)).await;
    alice.join("alice", "lobby").await;
    carol.join("carol", "lobby").await;
    bob.join("bob", "lobby").await;
    bob.wait_member("alice", 1).await;
    bob.wait_member("carol", 1).await;

    // Both keep typing (a key each half second) until bob names them together.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        alice.type_message("a").await;
        carol.type_message("c").await;
        let notice = bob.js(TYPING_NOTICE, Value::Null).await;
        if notice == json!("alice and carol are typing…") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "bob never showed both typing; last notice {notice}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for (page, me) in [(&alice, "alice"), (&carol, "carol")] {
        let notice = page.js(TYPING_NOTICE, Value::Null).await;
        assert!(
            !notice.as_str().unwrap_or_default().contains(me),
            "{me} is shown her own typing: {notice}"
        );
    }
    alice.close().await;
    bob.close().await;
    carol.close().await;
}

#[tokio::test]
async fn unacked_message_is_resent_with_the_same_key_after_reconnect_and_shown_once() {
    let env = TwoReplicas::start().await;
    let (balancer, alice, bob) = env.balanced_pages().await;
    alice.join("alice", "lobby").await;
    bob.join("bob", "lobby").await;
    alice.wait_member("bob", 1).await;

    // The server publishes alice's message, but its ack never reaches her page.
    alice.spy_on_frames(true).await;
    alice.send("exactly once").await;
    bob.wait_message("alice", "exactly once").await;
    alice.wait_message("alice", "exactly once").await;
    alice
        .wait_for(
            "the first ack (dropped)",
            "return window.__acks.some(a => a.dropped);",
            Value::Null,
        )
        .await;
    let pending = alice.outgoing().await;
    assert_eq!(
        pending,
        json!([{ "state": "pending", "text": "exactly once", "note": "sending…" }]),
        "unacked, so shown as pending"
    );

    // The connection breaks; the page comes back (same replica) and rejoins the room.
    alice.js("window.__dropAcks = false;", Value::Null).await;
    balancer.route(Some(socket_addr(&env.node_a)));
    alice
        .wait_for(
            "the resent message's ack",
            "return window.__acks.some(a => !a.dropped);",
            Value::Null,
        )
        .await;
    alice
        .wait_for(
            "no pending message",
            "return document.querySelectorAll('#messages .outgoing').length === 0;",
            Value::Null,
        )
        .await;

    // The same idem key both times: the server acked the repeat as a duplicate of the first.
    let sent = alice
        .js(
            "return window.__sent.filter(f => f.type === 'send' && f.text === 'exactly once');",
            Value::Null,
        )
        .await;
    let sent = sent.as_array().expect("sent frames");
    assert!(sent.len() >= 2, "not sent again: {sent:?}");
    let idem = sent[0]["idem"].as_str().expect("an idem key");
    assert!(!idem.is_empty() && idem.len() <= 64, "{idem:?}");
    assert!(
        sent.iter().all(|f| f["idem"] == sent[0]["idem"]),
        "another key on the resend: {sent:?}"
    );
    let acks = alice.js("return window.__acks;", Value::Null).await;
    let acks = acks.as_array().expect("acks");
    assert_eq!(acks[0]["dropped"], json!(true), "{acks:?}");
    assert!(
        acks[1..]
            .iter()
            .all(|a| a["duplicate"] == json!(true) && a["id"] == acks[0]["id"]),
        "the resend was published anew: {acks:?}"
    );

    // Both pages show the message once (a second publish would come before "after").
    bob.send("after").await;
    for page in [&alice, &bob] {
        page.wait_message("bob", "after").await;
        let lines = page.lines().await;
        let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["exactly once", "after"], "{}", page.label);
        assert_eq!(lines[0].id, acks[0]["id"].as_str().unwrap_or_default());
    }
    alice.close().await;
    bob.close().await;
}

#[tokio::test]
async fn message_sent_while_disconnected_waits_and_goes_once_the_room_is_rejoined() {
    let env = TwoReplicas::start().await;
    let (balancer, alice, bob) = env.balanced_pages().await;
    alice.join("alice", "lobby").await;
    bob.join("bob", "lobby").await;

    balancer.route(None);
    alice.wait_disconnected().await;
    alice.send("from the tunnel").await;
    let pending = alice.outgoing().await;
    assert_eq!(pending[0]["state"], json!("pending"), "{pending}");

    balancer.route(Some(socket_addr(&env.node_b)));
    bob.wait_message("alice", "from the tunnel").await;
    alice.wait_message("alice", "from the tunnel").await;
    alice
        .wait_for(
            "no pending message",
            "return document.querySelectorAll('#messages .outgoing').length === 0;",
            Value::Null,
        )
        .await;
    assert_eq!(alice.texts().await, ["from the tunnel"]);
    alice.close().await;
    bob.close().await;
}

/// A publish hook nobody answers, and `on_error = deny`: every message is `rejected`.
fn refusing_publish_hook(cfg: &mut roomcast::Config) {
    cfg.hooks.secret = Some("browser-test-hook-secret".into());
    cfg.hooks.publish.url = Some("http://127.0.0.1:1/publish".into());
    cfg.hooks.publish.on_error = roomcast::config::OnError::Deny;
}

#[tokio::test]
async fn message_rejected_by_the_publish_hook_says_why_and_is_not_resent() {
    let env = TwoReplicas::start_with(refusing_publish_hook).await;
    let (balancer, alice, bob) = env.balanced_pages().await;
    alice.join("alice", "lobby").await;
    bob.join("bob", "lobby").await;
    alice.spy_on_frames(false).await;

    alice.send("not allowed").await;
    let line = alice
        .wait_for(
            "the refusal next to the message",
            "const l = document.querySelector('#messages .outgoing[data-state=\"rejected\"]');
             return l && { text: l.querySelector('.text').textContent,
                           note: l.querySelector('.send-state').textContent };",
            Value::Null,
        )
        .await;
    assert_eq!(line["text"], json!("not allowed"));
    let note = line["note"].as_str().unwrap_or_default();
    assert!(
        note.starts_with("not sent: ") && note.len() > "not sent: ".len(),
        "the reason is not shown: {note:?}"
    );
    alice.screenshot("rejected-alice").await;

    // It left the outbox: a reconnect does not send it again (resends go as the room is
    // rejoined, so they would be recorded by the time the page shows it joined).
    balancer.route(Some(socket_addr(&env.node_a)));
    alice
        .wait_for(
            "the room to be rejoined",
            "const t = document.querySelector('.room-tab[data-room=\"lobby\"]');
             return window.__sent.some(f => f.type === 'join') && t.dataset.state === 'joined';",
            Value::Null,
        )
        .await;
    let sends = alice
        .js(
            "return window.__sent.filter(f => f.type === 'send').length;",
            Value::Null,
        )
        .await;
    assert_eq!(sends, json!(1), "the rejected message was sent again");
    assert!(
        alice.lines().await.is_empty(),
        "a refused message is shown as sent"
    );
    assert!(
        bob.lines().await.is_empty(),
        "a refused message reached bob"
    );
    alice.close().await;
    bob.close().await;
}

const API_KEY: &str = "browser-test-api-key-0123456789";

fn with_server_api(cfg: &mut roomcast::Config) {
    cfg.api.keys = vec![API_KEY.into()];
}

#[tokio::test]
async fn page_removed_from_a_room_says_so_and_does_not_rejoin_it() {
    let env = TwoReplicas::start_with(with_server_api).await;
    let (balancer, alice, bob) = env.balanced_pages().await;
    alice.join("alice", "dev").await;
    alice.join("alice", "lobby").await;
    bob.join("bob", "lobby").await;
    bob.wait_member("alice", 1).await;

    // The product's backend removes alice from lobby (bob's page is a handy HTTP client).
    let status = bob
        .js(
            "return fetch('/api/v1/rooms/lobby/members/alice', {
               method: 'DELETE', headers: { Authorization: `Bearer ${arguments[0]}` },
             }).then(r => r.status);",
            json!(API_KEY),
        )
        .await;
    assert_eq!(status, json!(200));
    alice
        .wait_system_line("removed", "You were removed from lobby")
        .await;
    let banner = alice.wait_banner("removed").await;
    assert_eq!(banner, "You were removed from lobby");
    bob.wait_system_line("presence", "alice left").await;
    let tab = alice
        .js(
            "return document.querySelector('.room-tab[data-room=\"lobby\"]').dataset.state;",
            Value::Null,
        )
        .await;
    assert_eq!(tab, json!("failed"));
    alice.screenshot("removed-alice").await;

    // After a reconnect the page rejoins dev, not lobby (rejoins go out together).
    alice.spy_on_frames(false).await;
    balancer.route(Some(socket_addr(&env.node_a)));
    alice
        .wait_for(
            "dev to be rejoined",
            "const t = document.querySelector('.room-tab[data-room=\"dev\"]');
             return window.__sent.some(f => f.type === 'join') && t.dataset.state === 'joined';",
            Value::Null,
        )
        .await;
    let joins = alice
        .js(
            "return window.__sent.filter(f => f.type === 'join').map(f => f.room);",
            Value::Null,
        )
        .await;
    assert_eq!(
        joins,
        json!(["dev"]),
        "rejoined the room it was removed from"
    );
    let saved = alice
        .js(
            "return JSON.parse(localStorage.getItem('roomcast.rooms'));",
            Value::Null,
        )
        .await;
    assert_eq!(saved, json!(["dev"]), "a reload would rejoin lobby");

    // Joining again by hand is up to the user; while barred, the refusal shows as it came.
    alice.type_into("#room", "lobby").await;
    alice
        .find("#join")
        .await
        .click()
        .await
        .expect("click #join");
    let refusal = alice
        .wait_for(
            "the refused join",
            "const l = [...document.querySelectorAll('#messages .sys[data-kind=\"error\"]')].pop();
             return l && l.querySelector('.sys-text').textContent;",
            Value::Null,
        )
        .await;
    let refusal = refusal.as_str().unwrap_or_default();
    assert!(
        refusal.starts_with("could not join lobby: ") && refusal.len() > 22,
        "{refusal:?}"
    );
    alice.close().await;
    bob.close().await;
}

// ---------------------------------------------------------------------------------------
// Large rooms: the member list a page at a time, the count from presence summaries
// ---------------------------------------------------------------------------------------

/// Pages of 3 members, notices only in rooms of at most 4, summaries every 500 ms.
fn small_presence_pages(cfg: &mut roomcast::Config) {
    cfg.presence.members_in_join = 3;
    cfg.presence.notify_max_members = 4;
    cfg.presence.summary_interval = Duration::from_millis(500);
}

impl Page {
    /// The names in the member list, as shown (each entry once).
    async fn member_names(&self) -> Vec<String> {
        let v = self
            .js(
                "return [...document.querySelectorAll('#members .member')].map(m => m.dataset.name);",
                Value::Null,
            )
            .await;
        serde_json::from_value(v).expect("member names")
    }

    /// Waits until the member count in the heading is `n`.
    async fn wait_member_count(&self, n: usize) {
        self.wait_for(
            &format!("member count {n}"),
            "const c = document.getElementById('member-count');
             return c.dataset.count === String(arguments[0]) && c.textContent.includes(String(arguments[0]));",
            json!(n),
        )
        .await;
    }

    /// The texts of the current room's join/leave lines.
    async fn presence_lines(&self) -> Vec<String> {
        let v = self
            .js(
                "return [...document.querySelectorAll('#messages .sys[data-kind=\"presence\"] .sys-text')]
                   .map(t => t.textContent);",
                Value::Null,
            )
            .await;
        serde_json::from_value(v).expect("presence lines")
    }

    /// Presses the member list's button `css` until it goes away (the last page came).
    /// Returns how many times it was pressed.
    async fn page_members_with(&self, css: &str) -> usize {
        let mut presses = 0;
        loop {
            let next = self
                .wait_for(
                    "the member list's next page",
                    "const b = document.querySelector(arguments[0]);
                     return b.hidden ? 'done' : b.disabled ? null : 'more';",
                    json!(css),
                )
                .await;
            if next == json!("done") {
                return presses;
            }
            assert!(presses < 20, "{}: the member list never ends", self.label);
            self.find(css)
                .await
                .click()
                .await
                .expect("click member button");
            presses += 1;
            // The answer came once the button is enabled again (or gone).
            self.wait_for(
                "the members answer",
                "const b = document.querySelector(arguments[0]);
                 return b.hidden || !b.disabled;",
                json!(css),
            )
            .await;
            if css == "#members-reload" {
                // A reload brings the first page; the rest comes with "Show more".
                return presses + Box::pin(self.page_members_with("#members-more")).await;
            }
        }
    }

    /// Asserts the member list shows exactly `expected` (any order), each once.
    async fn assert_members(&self, expected: &[String]) {
        let mut shown = self.member_names().await;
        shown.sort();
        let mut want = expected.to_vec();
        want.sort();
        assert_eq!(
            shown, want,
            "{}: the member list, each member once",
            self.label
        );
    }
}

#[tokio::test]
async fn large_room_lists_members_in_pages_and_counts_them_through_summaries() {
    let env = TwoReplicas::start_with(small_presence_pages).await;
    const ROOM: &str = "crowd";
    // Eight members before the page arrives, on both replicas.
    let mut guests = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for i in 1..=8 {
        let node = if i % 2 == 0 { &env.node_a } else { &env.node_b };
        let mut guest = node.client().await;
        let name = format!("guest{i}");
        guest.join(ROOM, &name).await;
        guests.push(guest);
        names.push(name);
    }

    let page = env.browser.open(&page_url(&env.node_a)).await;
    page.join("zoe", ROOM).await;
    names.push("zoe".into());
    // The count is the room's, not the length of the list.
    page.wait_member_count(9).await;
    let first = page.member_names().await;
    assert!(
        first.len() == 3 || (first.len() == 4 && first.iter().any(|n| n == "zoe")),
        "the first page of 3 (and the page's own user): {first:?}"
    );
    let note = page
        .js(
            "return document.getElementById('members-note').textContent.toLowerCase();",
            Value::Null,
        )
        .await;
    let partial = format!("showing {}", first.len());
    assert!(
        note.as_str()
            .is_some_and(|t| t.contains(&partial) && t.contains('9')),
        "the note says the list is partial: {note}"
    );
    page.screenshot("large-room-first-page").await;
    let presses = page.page_members_with("#members-more").await;
    assert!(presses >= 2, "9 members in pages of 3 took {presses} pages");
    page.assert_members(&names).await;
    page.screenshot("large-room-members").await;

    // Three more join: a room above 4 gets summaries, so the count follows without a line
    // per join.
    for i in 9..=11 {
        let node = if i % 2 == 0 { &env.node_a } else { &env.node_b };
        let mut guest = node.client().await;
        let name = format!("guest{i}");
        guest.join(ROOM, &name).await;
        guests.push(guest);
        names.push(name);
    }
    page.wait_member_count(12).await;
    assert_eq!(
        page.presence_lines().await,
        Vec::<String>::new(),
        "no join line in a room above presence.notify_max_members"
    );
    // The list no longer follows: it says so, and loads again from the start on request.
    page.wait_for(
        "the list to say it may be out of date",
        "const n = document.getElementById('members-note');
         return !n.hidden && n.dataset.state === 'stale' && !document.getElementById('members-reload').hidden;",
        Value::Null,
    )
    .await;
    page.page_members_with("#members-reload").await;
    page.assert_members(&names).await;
    page.screenshot("large-room-summary").await;

    // Eight leave (the room goes from 12 to 4, each leave told in a summary), then one more
    // from a room of 4: that leave is a notice again, with its line.
    for guest in guests.iter_mut().take(9) {
        guest.leave(ROOM).await;
    }
    page.wait_system_line("presence", "guest9 left").await;
    page.wait_member_count(3).await;
    page.wait_member("guest9", 0).await;
    assert_eq!(
        page.presence_lines().await,
        ["guest9 left"],
        "only the leave from a small room has a line"
    );
    // The eight leaves told in summaries are not in the list: it says so until reloaded.
    page.wait_for(
        "the list to say it may be out of date",
        "const n = document.getElementById('members-note');
         return !n.hidden && n.dataset.state === 'stale';",
        Value::Null,
    )
    .await;
    page.screenshot("large-room-small-again").await;
    page.page_members_with("#members-reload").await;
    let left = ["zoe", "guest10", "guest11"].map(String::from);
    page.assert_members(&left).await;
    page.close().await;
}

impl Page {
    /// From now on, the page's `members` requests go out changed: `"limit"` makes them ask
    /// for 0 members (which the gateway refuses), `"leave"` sends the first one as it is and
    /// then, before its answer can arrive, leaves the room. Counts the `members` answers
    /// received (`window.__membersAnswers`) and keeps the page's uncaught errors
    /// (`window.__errors`).
    async fn meddle_with_members_requests(&self, how: &str) {
        self.js(
            "window.__meddle = arguments[0];
             if (window.__meddling) return;
             window.__meddling = true;
             window.__errors = [];
             window.addEventListener('error', (e) => window.__errors.push(String(e.message)));
             window.__membersAnswers = 0;
             const counted = new WeakSet();
             const data = Object.getOwnPropertyDescriptor(MessageEvent.prototype, 'data').get;
             Object.defineProperty(MessageEvent.prototype, 'data', {
               configurable: true,
               get() {
                 const d = data.call(this);
                 if (typeof d === 'string' && d.includes('\"type\":\"members\"') && !counted.has(this)) {
                   counted.add(this);
                   window.__membersAnswers += 1;
                 }
                 return d;
               },
             });
             const send = WebSocket.prototype.send;
             WebSocket.prototype.send = function (data) {
               let f = null;
               try { f = JSON.parse(data); } catch (_) {}
               if (!f || f.type !== 'members' || window.__meddle === null) return send.call(this, data);
               if (window.__meddle === 'limit') return send.call(this, JSON.stringify({ ...f, limit: 0 }));
               window.__meddle = null;
               send.call(this, data);
               document.querySelector(`.room-leave[data-room=\"${f.room}\"]`).click();
             };",
            json!(how),
        )
        .await;
    }

    /// The member list's note, and whether its "Show more members" button can be pressed.
    async fn members_note_and_more(&self) -> (String, bool) {
        let v = self
            .js(
                "const b = document.getElementById('members-more');
                 return [document.getElementById('members-note').textContent, !b.hidden && !b.disabled];",
                Value::Null,
            )
            .await;
        serde_json::from_value(v).expect("note and button")
    }
}

/// A room of `n` guests (`guest1`..) on both replicas, joined before the page.
async fn crowd(env: &TwoReplicas, room: &str, n: usize) -> (Vec<common::Client>, Vec<String>) {
    let mut guests = Vec::new();
    let mut names = Vec::new();
    for i in 1..=n {
        let node = if i % 2 == 0 { &env.node_a } else { &env.node_b };
        let mut guest = node.client().await;
        let name = format!("guest{i}");
        guest.join(room, &name).await;
        guests.push(guest);
        names.push(name);
    }
    (guests, names)
}

/// A page joined as zoe to `crowd`, a room of 5 guests (6 members with zoe, more than
/// `small_presence_pages` lists in `joined`); returns the guests, every member's name and
/// the page.
async fn zoe_in_a_crowd(env: &TwoReplicas) -> (Vec<common::Client>, Vec<String>, Page) {
    let (guests, mut names) = crowd(env, "crowd", 5).await;
    let page = env.browser.open(&page_url(&env.node_a)).await;
    page.join("zoe", "crowd").await;
    names.push("zoe".into());
    page.wait_member_count(6).await;
    (guests, names, page)
}

#[tokio::test]
async fn refused_members_page_leaves_the_list_as_it_was_and_can_be_asked_again() {
    let env = TwoReplicas::start_with(small_presence_pages).await;
    let (_guests, names, page) = zoe_in_a_crowd(&env).await;
    let first = page.member_names().await;

    page.meddle_with_members_requests("limit").await;
    page.find("#members-more")
        .await
        .click()
        .await
        .expect("click show more");
    let (note, more) = page
        .wait_for(
            "the refusal in the member list's note",
            "const n = document.getElementById('members-note');
             const b = document.getElementById('members-more');
             return n.textContent.includes('could not load members') && !b.disabled
               ? [n.textContent, !b.hidden] : null;",
            Value::Null,
        )
        .await
        .as_array()
        .map(|a| {
            (
                a[0].as_str().unwrap_or_default().to_owned(),
                a[1] == json!(true),
            )
        })
        .expect("note and button");
    assert!(note.contains("bad_request"), "the note says why: {note:?}");
    assert!(more, "the button stays, to try again");
    assert_eq!(page.member_names().await, first, "the list is as it was");
    let errors = page
        .js(
            "return document.querySelectorAll('#messages .sys[data-kind=\"error\"]').length;",
            Value::Null,
        )
        .await;
    assert_eq!(errors, json!(0), "a refused page is no chat line");
    page.screenshot("members-refused").await;

    // Asked again as it should be, the rest comes, and the note goes.
    page.js("window.__meddle = null;", Value::Null).await;
    page.page_members_with("#members-more").await;
    page.assert_members(&names).await;
    let (note, _) = page.members_note_and_more().await;
    assert!(
        !note.contains("could not"),
        "the refusal is forgotten: {note:?}"
    );
    page.close().await;
}

#[tokio::test]
async fn members_page_answering_a_room_left_meanwhile_is_dropped() {
    let env = TwoReplicas::start_with(small_presence_pages).await;
    let (_guests, names, page) = zoe_in_a_crowd(&env).await;

    // The page asks for the second page and leaves the room before the answer comes.
    page.meddle_with_members_requests("leave").await;
    page.find("#members-more")
        .await
        .click()
        .await
        .expect("click show more");
    page.wait_for(
        "the answer for the room left",
        "return window.__membersAnswers === 1
           && document.querySelector('.room-tab[data-room=\"crowd\"]') === null;",
        Value::Null,
    )
    .await;
    let errors = page.js("return window.__errors;", Value::Null).await;
    assert_eq!(errors, json!([]), "the late answer broke the page");
    let shown = page.member_names().await;
    assert_eq!(shown, Vec::<String>::new(), "no room, no member list");

    // Joined again, the room shows its own first page, and pages on from it.
    page.join("zoe", "crowd").await;
    page.wait_member_count(6).await;
    let again = page.member_names().await;
    assert!(
        again.len() == 3 || (again.len() == 4 && again.iter().any(|n| n == "zoe")),
        "the first page of the new visit: {again:?}"
    );
    let (_, more) = page.members_note_and_more().await;
    assert!(more, "Show more is there and not stuck loading");
    page.page_members_with("#members-more").await;
    page.assert_members(&names).await;
    let errors = page.js("return window.__errors;", Value::Null).await;
    assert_eq!(errors, json!([]));
    page.close().await;
}
