//! `cliptag-soak [MINUTES]` (what `./x soak` runs): hours of use squeezed into minutes,
//! to see whether anything grows.
//!
//! - `cliptag run` with a live test source (640x480 at 30 frames/s, the pattern changing
//!   every 2 s) serves gRPC;
//! - 20 subscribers read every detection it publishes;
//! - its label set changes every second (replaced, then a label added);
//! - in a process of its own (this program started as `cliptag-soak cycle`), a second
//!   pipeline (`videotestsrc ! cliptag ! fakesink`, live) goes to NULL and back to
//!   PLAYING every 30 s: the model loaded, the worker started and the stream attached
//!   each time.
//!
//! After a warm-up (165 s: five state cycles), it reads the three processes' (the clients
//! run in this one) resident memory, threads and open file descriptors, once a minute,
//! and at the end, a whole number of cycles later (the minutes asked for, rounded up to
//! 30 s). It fails when a process's memory grew by 5% or more, when threads or
//! descriptors grew, or when a label change failed.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use cliptag_end_to_end::{Resources, Running, resources};
use cliptag_proto::v1::{self, cliptag_client::CliptagClient, detection_event::Event};
use gst::prelude::*;
use tokio_stream::StreamExt;

const SUBSCRIBERS: usize = 20;
/// The first reading: five state cycles in, and halfway between two of them, so that
/// every reading finds the cycled pipeline at the same point of its cycle. The first
/// cycles grow the heap of a process that loads and drops a model each time to its
/// working size (glibc's malloc raises its mmap threshold to the largest block freed, so
/// later loads come from the heap); from about the fourth on it stays there.
const WARM_UP: Duration = Duration::from_secs(165);
const LABEL_EVERY: Duration = Duration::from_secs(1);
const CYCLE_EVERY: Duration = Duration::from_secs(30);
/// Resident memory may grow by less than this share from the start to the end.
const MAX_GROWTH: f64 = 0.05;

#[derive(Default)]
struct Counts {
    results: AtomicU64,
    lagged: AtomicU64,
    subscriber_errors: AtomicU64,
    label_changes: AtomicU64,
    label_failures: AtomicU64,
}

fn main() {
    let outcome = if std::env::args().nth(1).as_deref() == Some("cycle") {
        cycle_forever()
    } else {
        soak()
    };
    if let Err(e) = outcome {
        eprintln!("cliptag-soak: {e:#}");
        std::process::exit(1);
    }
}

fn soak() -> Result<()> {
    let minutes: f64 = match std::env::args().nth(1) {
        Some(m) => m.parse().with_context(|| format!("minutes: {m:?}"))?,
        None => 10.0,
    };
    // A whole number of cycles between the first reading and the last.
    let cycles = (minutes * 60.0 / CYCLE_EVERY.as_secs_f64()).ceil().max(1.0);
    let run_for = CYCLE_EVERY.mul_f64(cycles);
    let minutes = run_for.as_secs_f64() / 60.0;

    let total = (WARM_UP + run_for).as_secs() + 60;
    let server = Running::start(
        &[
            "--stream-id",
            "soak",
            "--test-format",
            "640x480@30",
            "--cycle",
            "2",
            "--duration",
            &total.to_string(),
        ],
        Stdio::null(),
    );
    let server_pid = server.child.id();
    let address = format!("http://{}", server.address);
    eprintln!(
        "soak: cliptag run (pid {server_pid}) serves on {}",
        server.address
    );
    let mut cycler = Command::new(std::env::current_exe().context("this program")?)
        .arg("cycle")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("the cycled pipeline's process")?;
    let cycler_pid = cycler.id();
    // What malloc has in use in the cycled process after each cycle (its own count, which
    // a leak grows and the heap's retained free space does not).
    let in_use = Arc::new(AtomicU64::new(0));
    if let Some(out) = cycler.stdout.take() {
        let in_use = in_use.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(n) = line.strip_prefix("in-use ").and_then(|n| n.parse().ok()) {
                    in_use.store(n, Ordering::Relaxed);
                }
            }
        });
    }

    let counts = Arc::new(Counts::default());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio")?;
    let stop = Arc::new(tokio::sync::Notify::new());
    for _ in 0..SUBSCRIBERS {
        runtime.spawn(subscribe(address.clone(), counts.clone(), stop.clone()));
    }
    runtime.spawn(change_labels(address.clone(), counts.clone(), stop.clone()));

    let started = Instant::now();
    let mut first: Option<(Snapshot, u64)> = None;
    let mut next_reading = started + WARM_UP;
    let mut last = None;
    while started.elapsed() < WARM_UP + run_for + Duration::from_millis(500) {
        std::thread::sleep(Duration::from_millis(200));
        if let Some(status) = cycler.try_wait().context("the cycled pipeline")? {
            bail!("the cycled pipeline's process ended: {status}");
        }
        if Instant::now() >= next_reading {
            let now = snapshot(server_pid, cycler_pid)?;
            let heap = in_use.load(Ordering::Relaxed);
            eprintln!(
                "soak: {:>4.1} min  RSS MiB: cliptag run {:.1}, cycled pipeline {:.1} \
                 ({:.1} in use after its last cycle), clients {:.1}",
                started.elapsed().as_secs_f64() / 60.0,
                now.server.rss_kib as f64 / 1024.0,
                now.cycled.rss_kib as f64 / 1024.0,
                heap as f64 / f64::from(1 << 20),
                now.clients.rss_kib as f64 / 1024.0
            );
            first.get_or_insert((now, heap));
            last = Some((now, heap));
            next_reading += Duration::from_secs(60)
                .min(started + WARM_UP + run_for - next_reading)
                .max(Duration::from_secs(1));
        }
    }
    let (first, first_heap) = first.ok_or_else(|| anyhow!("the run ended before the warm-up"))?;
    let (last, last_heap) = last.ok_or_else(|| anyhow!("no reading"))?;
    stop.notify_waiters();
    // Its stdin closing tells the cycled pipeline's process to stop.
    drop(cycler.stdin.take());
    let cycler_exit = cycler.wait().context("the cycled pipeline")?;
    let (exit, _) = server.interrupt();
    runtime.shutdown_timeout(Duration::from_secs(5));

    let cpu = Command::new("sh")
        .args(["-c", "lscpu | sed -n 's/^Model name: *//p' | head -n 1"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!(
        "soak: {minutes} min after a {} s warm-up on {cpu} ({} cores)",
        WARM_UP.as_secs(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<46} {:>11} {:>11} {:>8} {:>10} {:>10}",
        "process", "RSS start", "RSS end", "growth", "threads", "fds"
    );
    let mut failures = Vec::new();
    for (name, a, b) in [
        (
            "cliptag run (live 640x480@30, 20 subscribers)",
            first.server,
            last.server,
        ),
        ("pipeline cycled every 30 s", first.cycled, last.cycled),
        (
            "20 subscribers and the label changer",
            first.clients,
            last.clients,
        ),
    ] {
        let growth = b.rss_kib as f64 / a.rss_kib.max(1) as f64 - 1.0;
        println!(
            "{name:<46} {:>7.1} MiB {:>7.1} MiB {:>+7.1}% {:>4} -> {:<4} {:>3} -> {:<3}",
            a.rss_kib as f64 / 1024.0,
            b.rss_kib as f64 / 1024.0,
            growth * 100.0,
            a.threads,
            b.threads,
            a.fds,
            b.fds
        );
        if growth >= MAX_GROWTH {
            failures.push(format!("{name}: memory grew {:.1}%", growth * 100.0));
        }
        if b.threads > a.threads || b.fds > a.fds {
            failures.push(format!("{name}: threads or descriptors grew"));
        }
    }
    println!(
        "cycled pipeline, bytes malloc has in use after a cycle: {:.1} MiB -> {:.1} MiB",
        first_heap as f64 / f64::from(1 << 20),
        last_heap as f64 / f64::from(1 << 20)
    );
    let c = &counts;
    println!(
        "results read by {SUBSCRIBERS} subscribers: {} ({} lagged, {} stream errors); label \
         changes: {} ({} failed); cliptag run exited {exit}, the cycled pipeline {cycler_exit}",
        c.results.load(Ordering::Relaxed),
        c.lagged.load(Ordering::Relaxed),
        c.subscriber_errors.load(Ordering::Relaxed),
        c.label_changes.load(Ordering::Relaxed),
        c.label_failures.load(Ordering::Relaxed),
    );
    if c.label_failures.load(Ordering::Relaxed) > 0 {
        failures.push("label changes failed".into());
    }
    if !exit.success() {
        failures.push(format!("cliptag run exited {exit}"));
    }
    if !cycler_exit.success() {
        failures.push(format!("the cycled pipeline exited {cycler_exit}"));
    }
    if failures.is_empty() {
        println!("soak: pass");
        Ok(())
    } else {
        bail!("soak failed: {}", failures.join("; "))
    }
}

/// The three processes' resources at one moment.
#[derive(Debug, Clone, Copy)]
struct Snapshot {
    server: Resources,
    cycled: Resources,
    clients: Resources,
}

/// Three samples 300 ms apart, the least of each: a descriptor or thread that lives for
/// a moment (a request being served) is not counted as growth.
fn snapshot(server: u32, cycled: u32) -> Result<Snapshot> {
    let sample = || -> Result<Snapshot> {
        Ok(Snapshot {
            server: resources(server).ok_or_else(|| anyhow!("cliptag run has exited"))?,
            cycled: resources(cycled).ok_or_else(|| anyhow!("the cycled pipeline has exited"))?,
            clients: resources(std::process::id()).ok_or_else(|| anyhow!("no /proc/self"))?,
        })
    };
    let least = |a: Resources, b: Resources| Resources {
        rss_kib: a.rss_kib.min(b.rss_kib),
        threads: a.threads.min(b.threads),
        fds: a.fds.min(b.fds),
    };
    let mut s = sample()?;
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(300));
        let t = sample()?;
        s = Snapshot {
            server: least(s.server, t.server),
            cycled: least(s.cycled, t.cycled),
            clients: least(s.clients, t.clients),
        };
    }
    Ok(s)
}

/// `cliptag-soak cycle`: a live pipeline taken to NULL and back to PLAYING every 30 s
/// until standard input closes.
fn cycle_forever() -> Result<()> {
    gst::init().context("GStreamer")?;
    gstcliptag::register_static().context("the cliptag plugin")?;
    let pipeline = gst::parse::launch(
        "videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=15/1 \
         ! cliptag stream-id=cycled labels=\"a moving ball,tv static\" ! fakesink",
    )
    .context("the cycled pipeline")?;
    let closed = Arc::new(AtomicBool::new(false));
    {
        let closed = closed.clone();
        std::thread::spawn(move || {
            // Reads until the soak closes the pipe (or goes away).
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
            closed.store(true, Ordering::Relaxed);
        });
    }
    let bus = pipeline.bus().ok_or_else(|| anyhow!("no bus"))?;
    let mut next_cycle = Instant::now();
    while !closed.load(Ordering::Relaxed) {
        if Instant::now() >= next_cycle {
            pipeline
                .set_state(gst::State::Null)
                .context("the cycled pipeline does not stop")?;
            // SAFETY: mallinfo2 only reads the allocator's counters.
            let info = unsafe { libc::mallinfo2() };
            println!("in-use {}", info.uordblks + info.hblkhd);
            pipeline
                .set_state(gst::State::Playing)
                .context("the cycled pipeline does not start")?;
            next_cycle += CYCLE_EVERY;
        }
        if let Some(msg) = bus.timed_pop_filtered(
            gst::ClockTime::from_mseconds(200),
            &[gst::MessageType::Error],
        ) && let gst::MessageView::Error(e) = msg.view()
        {
            bail!("the cycled pipeline failed: {}", e.error());
        }
    }
    pipeline
        .set_state(gst::State::Null)
        .context("the cycled pipeline does not stop")?;
    Ok(())
}

async fn subscribe(address: String, counts: Arc<Counts>, stop: Arc<tokio::sync::Notify>) {
    let Ok(mut client) = CliptagClient::connect(address).await else {
        counts.subscriber_errors.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let request = v1::StreamDetectionsRequest {
        changes_only: false,
        include_empty: true,
        ..Default::default()
    };
    let Ok(response) = client.stream_detections(request).await else {
        counts.subscriber_errors.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let mut stream = response.into_inner();
    loop {
        let next = tokio::select! {
            next = stream.next() => next,
            _ = stop.notified() => return,
        };
        match next {
            Some(Ok(message)) => match message.event {
                Some(Event::Detection(_)) => {
                    counts.results.fetch_add(1, Ordering::Relaxed);
                }
                Some(Event::Lagged(l)) => {
                    counts.lagged.fetch_add(l.missed, Ordering::Relaxed);
                }
                None => {}
            },
            Some(Err(_)) => {
                counts.subscriber_errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
            None => return,
        }
    }
}

async fn change_labels(address: String, counts: Arc<Counts>, stop: Arc<tokio::sync::Notify>) {
    let Ok(mut client) = CliptagClient::connect(address).await else {
        counts.label_failures.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let label = |name: &str| v1::Label {
        name: name.into(),
        prompts: vec![],
    };
    let base = [
        "smpte color bars",
        "a moving ball",
        "tv static",
        "a checkerboard",
    ];
    let mut tick = tokio::time::interval(LABEL_EVERY);
    for n in 0u64.. {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.notified() => return,
        }
        // Every other second the whole set is replaced; in between one label is added.
        let outcome = if n % 2 == 0 {
            client
                .set_labels(v1::SetLabelsRequest {
                    stream: "soak".into(),
                    labels: Some(v1::LabelSet {
                        labels: base.iter().map(|l| label(l)).collect(),
                        ..Default::default()
                    }),
                    if_version: None,
                })
                .await
                .map(|_| ())
        } else {
            client
                .update_labels(v1::UpdateLabelsRequest {
                    stream: "soak".into(),
                    add: vec![label(&format!("pattern number {n}"))],
                    remove: vec![],
                    if_version: None,
                })
                .await
                .map(|_| ())
        };
        match outcome {
            Ok(()) => counts.label_changes.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                eprintln!("soak: a label change failed: {e}");
                counts.label_failures.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}
