//! The web console in a real browser: Debian's headless Chromium loads the page that
//! `cliptag run --http` serves, sees the labels of a live test pattern change and its
//! picture and counters arrive, is refused an edit without the token, makes one with
//! it and sees the version move and the tags follow, and gets the server's conflict
//! message (and the current set) on a stale edit, the edit's text kept.
//!
//! With `CLIPTAG_SCREENSHOT_DIR` set, it saves the page as `console.png` there
//! (`./x screenshots`).

use std::process::Stdio;
use std::time::Duration;

use cliptag_end_to_end::browser::{Browser, browser_path};
use cliptag_end_to_end::{Running, http};
use serde_json::Value;

const TOKEN: &str = "console-test-token";

/// A label another client adds (as JavaScript literals): a name with ':' and a prompt
/// with '|', the separators of the page's replace editor.
const TRICKY_NAME: &str = "'a pinwheel: spinning'";
const TRICKY_PROMPT: &str = "'a pinwheel | a windmill toy'";

/// The console's address, from `cliptag run`'s stderr.
fn console_url(run: &Running) -> String {
    run.said("cliptag: web console on ")
}

/// JavaScript: the first label in the "Now" list.
const TOP_LABEL: &str = "(() => { const e = document.querySelector('#now [data-label]'); return e && e.dataset.label; })()";

fn number(value: &Value) -> u64 {
    value
        .as_u64()
        .or_else(|| value.as_f64().map(|f| f as u64))
        .unwrap_or(0)
}

#[test]
fn the_console_shows_live_labels_edits_them_and_reports_conflicts() {
    let chromium =
        browser_path().expect("no Chromium: ./x test installs Debian's chromium-headless-shell");
    let run = Running::start(
        &[
            "--http",
            "127.0.0.1:0",
            "--token",
            TOKEN,
            "--stream-id",
            "cam",
            "--cycle",
            "2",
        ],
        Stdio::null(),
    );
    let url = console_url(&run);
    let mut b = Browser::start(&chromium, 1280, 1000).expect("the browser starts");
    b.navigate(&url).expect("the page loads");
    let long = Duration::from_secs(60);

    // Live labels, changing as the test pattern does.
    let first = b.wait_for(TOP_LABEL, long).expect("labels arrive");
    let next = b
        .wait_for(
            &format!("(() => {{ const l = {TOP_LABEL}; return l && l !== {first} && l; }})()"),
            long,
        )
        .expect("the top label changes with the pattern");
    assert_ne!(first, next);
    b.wait_for("document.getElementById('snapshot').naturalWidth > 0", long)
        .expect("the stream's picture shows");
    b.wait_for(
        "Number(document.querySelector('[data-stat=frames_in]').textContent.replace(/[^0-9]/g, '')) > 0",
        long,
    )
    .expect("the counters show");
    let v0 = number(
        &b.wait_for(
            "Number(document.getElementById('labels-version').textContent) || null",
            long,
        )
        .expect("the label set shows"),
    );
    assert!(v0 >= 1);

    // Without the token: refused, with the server's message.
    let add = "(() => {
        document.getElementById('add-name').value = 'concentric circles';
        document.getElementById('add-button').click();
        return true; })()";
    b.eval(add).expect("add without the token");
    let message = b
        .wait_for(
            "(() => { const m = document.getElementById('message');
                      return !m.hidden && m.classList.contains('error')
                          && m.textContent.includes('UNAUTHENTICATED') && m.textContent; })()",
            long,
        )
        .expect("the refusal shows");
    assert!(message.to_string().contains("token"), "{message}");
    assert_eq!(
        number(
            &b.eval("Number(document.getElementById('labels-version').textContent)")
                .expect("version")
        ),
        v0,
        "nothing changed"
    );

    // With the token: the version moves and the detections follow.
    b.eval(&format!(
        "(() => {{ const t = document.getElementById('token'); t.value = '{TOKEN}';
                   t.dispatchEvent(new Event('input')); return true; }})()"
    ))
    .expect("type the token");
    b.eval(add).expect("add with the token");
    let v1 = v0 + 1;
    b.wait_for(
        &format!("Number(document.getElementById('labels-version').textContent) === {v1}"),
        long,
    )
    .expect("the set's version moves");
    b.wait_for(
        &format!(
            "(() => {{ const s = window.cliptagConsole.state(); return s.version === {v1}
                 && document.querySelector('#now [data-label=\"concentric circles\"]') !== null; }})()"
        ),
        long,
    )
    .expect("the tags follow the new set");
    b.wait_for(
        "document.querySelector('#label-list [data-label=\"concentric circles\"]') !== null",
        long,
    )
    .expect("the new label is listed");
    if let Some(dir) = std::env::var_os("CLIPTAG_SCREENSHOT_DIR") {
        // A moment for the picture to show the new set too.
        std::thread::sleep(Duration::from_secs(2));
        let png = b.screenshot().expect("a screenshot");
        std::fs::write(std::path::Path::new(&dir).join("console.png"), png)
            .expect("write the screenshot");
    }

    // A stale edit: another operator changes the set (over the same API, with the
    // token) just before this page sends its replacement with the version it shows.
    // The click follows the other edit's reply in the same task, so the page cannot
    // have heard of the change; that it still shows the old version is checked.
    let typed = "a moving ball\\ntv static\\na red screen";
    let outcome = b
        .eval(&format!(
            "(async () => {{
                document.getElementById('replace-text').value = '{typed}';
                const other = await fetch('/api/labels/update', {{
                    method: 'POST',
                    headers: {{'content-type': 'application/json', 'authorization': 'Bearer {TOKEN}'}},
                    body: JSON.stringify({{stream: 'cam', add: [{{name: {TRICKY_NAME}, prompts: [{TRICKY_PROMPT}]}}], if_version: {v1}}}),
                }});
                const shown = Number(document.getElementById('labels-version').textContent);
                document.getElementById('replace-button').click();
                return [other.status, shown];
            }})()"
        ))
        .expect("the two edits");
    assert_eq!(number(&outcome[0]), 200, "the other operator's edit");
    assert_eq!(
        number(&outcome[1]),
        v1,
        "the page showed the old version when it sent its edit"
    );
    let conflict = b
        .wait_for(
            "(() => { const m = document.getElementById('message');
                      return m.classList.contains('error')
                          && m.textContent.includes('FAILED_PRECONDITION') && m.textContent; })()",
            long,
        )
        .expect("the conflict shows");
    assert!(conflict.to_string().contains("version"), "{conflict}");
    let v2 = v1 + 1;
    b.wait_for(
        &format!(
            "Number(document.getElementById('labels-version').textContent) === {v2}
             && document.querySelector('#label-list [data-label=\"a pinwheel: spinning\"]') !== null"
        ),
        long,
    )
    .expect("the current set shows after the conflict");
    let kept = b
        .eval("document.getElementById('replace-text').value")
        .expect("the editor");
    assert_eq!(
        kept.as_str(),
        Some("a moving ball\ntv static\na red screen"),
        "the edit's text is kept"
    );
    drop(b);
    let (status, _) = run.interrupt();
    assert!(status.success(), "{status}");
}

/// The error body's code.
fn code(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .map(|v| v["code"].as_str().unwrap_or_default().to_string())
        .unwrap_or_else(|_| String::from_utf8_lossy(body).to_string())
}

#[test]
fn the_console_api_answers_with_the_services_status_codes() {
    let run = Running::start(
        &[
            "--http",
            "127.0.0.1:0",
            "--token",
            TOKEN,
            "--stream-id",
            "cam",
        ],
        Stdio::null(),
    );
    let url = console_url(&run);
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let json = "content-type: application/json";
    let bearer = format!("authorization: Bearer {TOKEN}");
    let set = |if_version: u64, labels: &str| {
        format!(
            r#"{{"stream": "cam", "labels": {{"labels": [{labels}]}}, "if_version": {if_version}}}"#
        )
    };
    let one = r#"{"name": "a moving ball"}, {"name": "tv static"}"#;

    let (status, body) = http(&addr, "GET", "/api/info", &[], b"");
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).expect("JSON")["token_required"],
        true
    );

    let cases: Vec<(Vec<&str>, String, u16, &str)> = vec![
        (vec![json], set(1, one), 401, "UNAUTHENTICATED"),
        (
            vec![json, "authorization: Bearer wrong"],
            set(1, one),
            401,
            "UNAUTHENTICATED",
        ),
        (
            vec![json, &bearer],
            "{not json".into(),
            400,
            "INVALID_ARGUMENT",
        ),
        (
            vec!["content-type: text/plain", &bearer],
            set(1, one),
            415,
            "INVALID_ARGUMENT",
        ),
        (
            vec![json, &bearer],
            r#"{"labels": 3}"#.into(),
            422,
            "INVALID_ARGUMENT",
        ),
        (vec![json, &bearer], set(1, ""), 400, "INVALID_ARGUMENT"),
        (vec![json, &bearer], set(7, one), 409, "FAILED_PRECONDITION"),
        (
            vec![json, &bearer],
            set(1, one).replace("\"cam\"", "\"nope\""),
            404,
            "NOT_FOUND",
        ),
    ];
    for (headers, body, want, want_code) in &cases {
        let (status, reply) = http(&addr, "PUT", "/api/labels", headers, body.as_bytes());
        assert_eq!(
            (status, code(&reply).as_str()),
            (*want, *want_code),
            "{headers:?} {body}"
        );
    }
    let (status, reply) = http(
        &addr,
        "PUT",
        "/api/labels",
        &[json, &bearer],
        &vec![b' '; 2 << 20],
    );
    assert_eq!(
        (status, code(&reply).as_str()),
        (413, "RESOURCE_EXHAUSTED"),
        "an oversized body"
    );
    // Nothing above changed the set.
    let (_, labels) = http(&addr, "GET", "/api/labels?stream=cam", &[], b"");
    let labels: Value = serde_json::from_slice(&labels).expect("JSON");
    assert_eq!(labels["sets"][0]["version"], 1, "{labels}");
    // The right edit goes through.
    let (status, reply) = http(
        &addr,
        "PUT",
        "/api/labels",
        &[json, &bearer],
        set(1, one).as_bytes(),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));
    let reply: Value = serde_json::from_slice(&reply).expect("JSON");
    assert_eq!(reply["sets"][0]["version"], 2);

    let (status, reply) = http(&addr, "GET", "/api/streams/nope/snapshot.jpg", &[], b"");
    assert_eq!((status, code(&reply).as_str()), (404, "NOT_FOUND"));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, jpeg) = http(&addr, "GET", "/api/streams/cam/snapshot.jpg", &[], b"");
        if status == 200 {
            assert!(jpeg.starts_with(&[0xff, 0xd8]), "a JPEG");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no picture of the stream"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Another host name (a page that rebound its name to loopback) is refused, as are
    // changes from a page of another origin; errors are JSON everywhere.
    let (status, reply) = http(&addr, "GET", "/api/streams", &["host: evil.example"], b"");
    assert_eq!((status, code(&reply).as_str()), (403, "PERMISSION_DENIED"));
    let foreign = "origin: http://evil.example";
    let (status, reply) = http(
        &addr,
        "PUT",
        "/api/labels",
        &[json, &bearer, foreign],
        set(2, one).as_bytes(),
    );
    assert_eq!((status, code(&reply).as_str()), (403, "PERMISSION_DENIED"));
    let (status, reply) = http(&addr, "GET", "/no/such/page", &[], b"");
    assert_eq!((status, code(&reply).as_str()), (404, "NOT_FOUND"));
    let (status, reply) = http(&addr, "DELETE", "/api/labels", &[], b"");
    assert_eq!((status, code(&reply).as_str()), (405, "UNIMPLEMENTED"));
    let (status, reply) = http(&addr, "GET", "/api/labels?stream=nope", &[], b"");
    assert_eq!((status, code(&reply).as_str()), (404, "NOT_FOUND"));

    let (_, streams) = http(&addr, "GET", "/api/streams", &[], b"");
    let streams: Value = serde_json::from_slice(&streams).expect("JSON");
    assert_eq!(streams["streams"][0]["id"], "cam", "{streams}");
    let (exit, _) = run.interrupt();
    assert!(exit.success());
}
