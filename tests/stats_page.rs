//! The stats page at the admin listener's `/`, rendered by a real headless Chromium (Debian's
//! `chromium`) against a real etcd, real upstreams and active checks: after the page's script ran,
//! every discovered server has a row with its address and state `up` (and a drained one
//! `draining`); once one upstream dies and the JSON API reports it down, that server's row (not
//! just the page) reads `down`. It also takes a 1280x800 screenshot; with
//! `SWITCHYARD_SCREENSHOT=<path>` the PNG is copied there (that is how `docs/stats-page.png` is
//! made).
//!
//! Chromium missing is a failure that says to run `./deploy/test.sh` (which installs it), unless
//! `SWITCHYARD_SKIP_BROWSER=1` is set: then the test prints that it skipped and passes.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::{Cfg, Etcd, Lb, Upstream, get, wait_until};

/// One Chromium run took ~1 s here; a loaded machine gets a lot more before it counts as hung.
const BROWSER_LIMIT: Duration = Duration::from_secs(30);
/// Virtual time the page gets before the DOM is read (its script refreshes every 2 s); network
/// waits do not consume it, so the first fetch has always completed.
const VIRTUAL_TIME_MS: u32 = 5000;
/// A screenshot of the page with two tables is ~50 KB; a blank or error page is a few KB.
const MIN_SCREENSHOT_BYTES: u64 = 15_000;

/// Debian's Chromium: `/usr/bin/chromium`, else `chromium` on `PATH`.
fn find_chromium() -> Option<PathBuf> {
    let fixed = PathBuf::from("/usr/bin/chromium");
    if fixed.is_file() {
        return Some(fixed);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("chromium"))
        .find(|p| p.is_file())
}

/// A temp dir for Chromium's profiles, output and the screenshot; removed unless the test panics
/// (then its path is printed so `chromium-*.stderr` can be read).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "switchyard-stats-page-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "stats page temp dir kept for inspection: {}",
                self.0.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Headless Chromium, one fresh process and profile per page load.
struct Browser {
    bin: PathBuf,
    dir: PathBuf,
    runs: usize,
}

impl Browser {
    /// Run Chromium on `url` with `extra` flags; returns its stdout. Killed by PID (and its
    /// process group, which holds its renderer and zygote children) if it outlives
    /// `BROWSER_LIMIT`.
    async fn run(&mut self, url: &str, extra: &[String]) -> String {
        self.runs += 1;
        let n = self.runs;
        let profile = self.dir.join(format!("profile-{n}"));
        let out_path = self.dir.join(format!("chromium-{n}.stdout"));
        let err_path = self.dir.join(format!("chromium-{n}.stderr"));
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--virtual-time-budget={VIRTUAL_TIME_MS}"))
        .args(extra)
        .arg(url)
        // Files, not pipes: a child that outlives the browser process cannot hold our read open.
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("chromium stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("chromium stderr file"))
        .process_group(0)
        .kill_on_drop(true);
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.bin.display()));
        let pid = child.id().expect("chromium pid");
        let status = match tokio::time::timeout(BROWSER_LIMIT, child.wait()).await {
            Ok(status) => status.expect("wait for chromium"),
            Err(_) => {
                let _ = child.kill().await;
                // The group was created for this child (`process_group(0)`): its id is `pid`.
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", "--", &format!("-{pid}")])
                    .status();
                panic!(
                    "chromium (pid {pid}) did not finish {url} within {BROWSER_LIMIT:?}; killed.\n\
                     --- stderr ---\n{}",
                    tail(&err_path)
                );
            }
        };
        assert!(
            status.success(),
            "chromium exited {status} on {url}\n--- stderr ---\n{}",
            tail(&err_path)
        );
        eprintln!("chromium run {n} took {:?}", started.elapsed());
        std::fs::read_to_string(&out_path).expect("read chromium stdout")
    }

    /// The DOM after the page's script ran.
    async fn dom(&mut self, url: &str) -> String {
        let dom = self.run(url, &["--dump-dom".to_string()]).await;
        assert!(dom.contains("<html"), "no DOM dumped for {url}: {dom:?}");
        dom
    }

    async fn screenshot(&mut self, url: &str, path: &Path) {
        self.run(
            url,
            &[
                "--window-size=1280,800".to_string(),
                format!("--screenshot={}", path.display()),
            ],
        )
        .await;
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Text content of each `<tag ...>...</tag>` in `html`, in order, with inner tags removed.
fn cells(html: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i..];
        let Some(gt) = after.find('>') else { break };
        let Some(end) = after.find(&close) else { break };
        out.push(strip_tags(&after[gt + 1..end]));
        rest = &after[end + close.len()..];
    }
    out
}

fn strip_tags(s: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in s.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.trim().to_string()
}

/// One server's row as rendered: its `data-state` attribute and its cells keyed by the column
/// headers of the backend's table.
struct Row {
    data_state: String,
    cols: HashMap<String, String>,
}

/// The row `data-server="addr"` inside the table `data-backend="backend"`, or why there is none.
fn row(dom: &str, backend: &str, addr: &str) -> Result<Row, String> {
    let t = dom
        .find(&format!("<table data-backend=\"{backend}\""))
        .ok_or_else(|| format!("no table for backend {backend}"))?;
    let table = &dom[t..t + dom[t..].find("</table>").ok_or("unclosed table")?];
    let headers = cells(
        &table[..table.find("</tr>").ok_or("table without rows")?],
        "th",
    );
    let at = table
        .find(&format!("data-server=\"{addr}\""))
        .ok_or_else(|| format!("no row data-server=\"{addr}\" in backend {backend}"))?;
    let start = table[..at]
        .rfind("<tr")
        .ok_or("row attribute outside a <tr>")?;
    let end = at + table[at..].find("</tr>").ok_or("unclosed row")?;
    let tr = &table[start..end];
    let open_tag = &tr[..tr.find('>').ok_or("unclosed <tr>")?];
    let data_state = open_tag
        .split("data-state=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .ok_or("row has no data-state")?
        .to_string();
    let values = cells(tr, "td");
    if values.len() != headers.len() {
        return Err(format!(
            "{} cells under {} headers",
            values.len(),
            headers.len()
        ));
    }
    Ok(Row {
        data_state,
        cols: headers.into_iter().zip(values).collect(),
    })
}

/// Assert the rendered row of `addr` in `backend` shows that address and `state`.
fn assert_row(dom: &str, backend: &str, name: &str, addr: &str, state: &str) {
    let r = row(dom, backend, addr).unwrap_or_else(|why| panic!("{why}\n--- DOM ---\n{dom}"));
    let col = |c: &str| r.cols.get(c).map(String::as_str);
    assert_eq!(col("address"), Some(addr), "{:?}", r.cols);
    assert_eq!(col("name"), Some(name), "{:?}", r.cols);
    assert_eq!(col("state"), Some(state), "row of {addr}: {:?}", r.cols);
    assert_eq!(r.data_state, state, "data-state of {addr}");
}

/// Server address -> state, from `/api/v1/backends`.
async fn api_states(lb: &Lb) -> HashMap<String, String> {
    let j = lb.backends().await;
    let mut m = HashMap::new();
    for b in j["backends"].as_array().unwrap() {
        for s in b["servers"].as_array().unwrap() {
            m.insert(
                s["addr"].as_str().unwrap().to_string(),
                s["state"].as_str().unwrap().to_string(),
            );
        }
    }
    m
}

async fn wait_states(lb: &Lb, what: &str, want: &[(String, &str)]) {
    wait_until(what, Duration::from_secs(10), || async move {
        let have = api_states(lb).await;
        want.iter()
            .all(|(addr, state)| have.get(addr).map(String::as_str) == Some(*state))
    })
    .await;
}

/// Frontends `web` and `api` in front of backends of those names (from etcd), with fast HTTP
/// checks of `/healthz` that take a server down at its first failure.
fn config(etcd: &Etcd, web: &str, api: &str) -> String {
    let check = "type = \"http\"\npath = \"/healthz\"\ninter = \"100ms\"\ntimeout = \"500ms\"\nrise = 2\nfall = 1";
    Cfg::http("web")
        .etcd(&etcd.url())
        .etcd_backend(web)
        .check(check)
        .frontend("api")
        .etcd_backend(api)
        .check(check)
        .toml()
}

#[tokio::test]
async fn stats_page_renders_servers_and_shows_a_dead_one_down() {
    let Some(bin) = find_chromium() else {
        if std::env::var("SWITCHYARD_SKIP_BROWSER").as_deref() == Ok("1") {
            eprintln!(
                "SKIPPED stats page browser test: chromium not installed (SWITCHYARD_SKIP_BROWSER=1)"
            );
            return;
        }
        panic!(
            "chromium not found (/usr/bin/chromium or on PATH): the stats page test needs a real \
             headless browser. Run ./deploy/test.sh, which installs Debian's `chromium` \
             (or apt-get install -y chromium); set SWITCHYARD_SKIP_BROWSER=1 to skip this test."
        );
    };
    let started = Instant::now();
    let tmp = TempDir::new();
    let mut browser = Browser {
        bin,
        dir: tmp.0.clone(),
        runs: 0,
    };

    // Backend names are unique to this test: the metrics recorder is process-global.
    let (web, api) = ("statspage-web", "statspage-api");
    let etcd = Etcd::start().await;
    let mut webs = Vec::new();
    for i in 1..=3 {
        let u = Upstream::start(&format!("web-{i}")).await;
        etcd.put(&format!("/{web}/backend/web-{i}"), &u.addr().to_string())
            .await;
        webs.push(u);
    }
    let mut apis = Vec::new();
    for i in 1..=2 {
        let u = Upstream::start(&format!("api-{i}")).await;
        etcd.put(&format!("/{api}/backend/api-{i}"), &u.addr().to_string())
            .await;
        apis.push(u);
    }
    let addr = |u: &Upstream| u.addr().to_string();
    let lb = Lb::start_ready(&config(&etcd, web, api)).await;
    let all: Vec<(String, &str)> = webs.iter().chain(&apis).map(|u| (addr(u), "up")).collect();
    wait_states(&lb, "every server up in the API", &all).await;

    // Some traffic, so the request columns are not all zero; then drain api-2.
    for _ in 0..30 {
        assert_eq!(get(lb.http_addr("web"), "/").await.0, 200);
    }
    for _ in 0..12 {
        assert_eq!(get(lb.http_addr("api"), "/").await.0, 200);
    }
    let status = lb.set_server_state(api, "api-2", "drain").await;
    assert_eq!(status, 200, "drain api-2");
    wait_states(&lb, "api-2 draining", &[(addr(&apis[1]), "draining")]).await;

    let page = format!("http://{}/", lb.admin_addr());
    let dom = browser.dom(&page).await;
    assert!(
        dom.contains("discovery v2: connected"),
        "discovery panel: {dom}"
    );
    for (i, u) in webs.iter().enumerate() {
        assert_row(&dom, web, &format!("web-{}", i + 1), &addr(u), "up");
    }
    assert_row(&dom, api, "api-1", &addr(&apis[0]), "up");
    assert_row(&dom, api, "api-2", &addr(&apis[1]), "draining");

    // web-2's process dies (its key stays in etcd): the checks mark it down, and so does its row.
    webs[1].stop().await;
    wait_states(&lb, "web-2 down in the API", &[(addr(&webs[1]), "down")]).await;
    for _ in 0..20 {
        assert_eq!(get(lb.http_addr("web"), "/").await.0, 200);
    }
    let dom = browser.dom(&page).await;
    assert_row(&dom, web, "web-1", &addr(&webs[0]), "up");
    assert_row(&dom, web, "web-2", &addr(&webs[1]), "down");
    assert_row(&dom, web, "web-3", &addr(&webs[2]), "up");
    assert_row(&dom, api, "api-1", &addr(&apis[0]), "up");
    // The check column has HAProxy's status code and the reason.
    let check_of = |a: &str| {
        row(&dom, web, a)
            .unwrap()
            .cols
            .get("last check")
            .cloned()
            .unwrap_or_default()
    };
    let live = check_of(&addr(&webs[0]));
    assert!(live.starts_with("L7OK L7 status 200"), "{live}");
    let dead = check_of(&addr(&webs[1]));
    assert!(dead.starts_with("L4CON L4 connect"), "{dead}");
    assert!(
        dom.contains("2/3 up"),
        "backend header should count 2 of 3 up: {dom}"
    );
    // The legend names every state, and the JSON behind the page is linked.
    for want in [
        "maint: taken out by an operator",
        "href=\"/api/v1/backends\"",
        "href=\"/api/v1/frontends\"",
        "href=\"/metrics\"",
    ] {
        assert!(dom.contains(want), "{want}: {dom}");
    }

    // Maintenance is its own word and colour, not a red "down".
    assert_eq!(lb.set_server_state(api, "api-1", "maint").await, 200);
    let dom = browser.dom(&page).await;
    assert_row(&dom, api, "api-1", &addr(&apis[0]), "maint");
    assert!(
        dom.contains(&format!(
            "<tr class=\"maint\" data-server=\"{}\"",
            addr(&apis[0])
        )),
        "maint row class: {dom}"
    );
    // The frontends table counts what the test sent through each frontend.
    let fe = |name: &str| -> HashMap<String, String> {
        let t = dom.find("<table data-frontends").expect("frontends table");
        let table = &dom[t..t + dom[t..].find("</table>").unwrap()];
        let headers = cells(&table[..table.find("</tr>").unwrap()], "th");
        let at = table
            .find(&format!("data-frontend=\"{name}\""))
            .unwrap_or_else(|| panic!("no row for frontend {name}: {table}"));
        let start = table[..at].rfind("<tr").unwrap();
        let end = at + table[at..].find("</tr>").unwrap();
        headers
            .into_iter()
            .zip(cells(&table[start..end], "td"))
            .collect()
    };
    let web_fe = fe("web");
    assert_eq!(
        web_fe.get("requests").map(String::as_str),
        Some("50"),
        "{web_fe:?}"
    );
    assert_eq!(
        web_fe.get("mode").map(String::as_str),
        Some("http"),
        "{web_fe:?}"
    );
    assert_eq!(fe("api").get("requests").map(String::as_str), Some("12"));

    let png = tmp.0.join("stats-page.png");
    browser.screenshot(&page, &png).await;
    let bytes = std::fs::read(&png).unwrap_or_else(|e| panic!("screenshot {}: {e}", png.display()));
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "not a PNG: {}",
        png.display()
    );
    assert!(
        bytes.len() as u64 >= MIN_SCREENSHOT_BYTES,
        "screenshot is only {} bytes (blank page?)",
        bytes.len()
    );
    // IHDR: width and height, big-endian, right after the signature and chunk header.
    let dim = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    assert_eq!((dim(16), dim(20)), (1280, 800), "screenshot size");
    if let Some(dest) = std::env::var_os("SWITCHYARD_SCREENSHOT") {
        let dest = PathBuf::from(dest);
        if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).expect("create screenshot dir");
        }
        std::fs::copy(&png, &dest)
            .unwrap_or_else(|e| panic!("copy screenshot to {}: {e}", dest.display()));
        eprintln!("screenshot copied to {}", dest.display());
    }

    lb.shutdown().await;
    eprintln!("stats page test took {:?}", started.elapsed());
}
