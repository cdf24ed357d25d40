//! Load client for the change event benchmark (`bench/events.py` runs it).
//!
//! `latency`: opens `--subscribers` streams on a collection, then writes
//! `--rate` documents per second for `--duration` seconds, each carrying
//! the time it was sent (`"t"`, nanoseconds since the epoch); every
//! subscriber records, for each event it receives, the time from send to
//! receipt. Prints one JSON line: deliveries made and expected, the
//! delivery latency p50/p99/max, the writes' own latency (POST to 201),
//! and the write rate achieved.
//!
//! `idle`: opens `--subscribers` streams, prints a JSON line once every
//! one has its first bytes, and holds (and reads) them for `--hold`
//! seconds: the caller measures the server's memory meanwhile, or writes.
//!
//! It runs on the same machine as the server: its own CPU use competes
//! with the server's, so absolute numbers are pessimistic.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;

struct Args {
    mode: String,
    base: String,
    token: String,
    collection: String,
    subscribers: usize,
    rate: u64,
    duration: u64,
    hold: u64,
}

fn args() -> Args {
    let mut a = Args {
        mode: String::new(),
        base: String::new(),
        token: String::new(),
        collection: "bench".into(),
        subscribers: 1000,
        rate: 1000,
        duration: 10,
        hold: 10,
    };
    let mut it = std::env::args().skip(1);
    a.mode = it.next().unwrap_or_default();
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_default();
        match flag.as_str() {
            "--base" => a.base = value,
            "--token" => a.token = value,
            "--collection" => a.collection = value,
            "--subscribers" => a.subscribers = value.parse().unwrap_or(a.subscribers),
            "--rate" => a.rate = value.parse().unwrap_or(a.rate),
            "--duration" => a.duration = value.parse().unwrap_or(a.duration),
            "--hold" => a.hold = value.parse().unwrap_or(a.hold),
            other => {
                eprintln!("unknown flag {other}");
                std::process::exit(2);
            }
        }
    }
    a
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// Opens one stream; `opened` is counted once its first bytes arrive.
async fn open(
    client: &reqwest::Client,
    a: &Args,
    opened: &AtomicUsize,
) -> Option<reqwest::Response> {
    let url = format!("{}/v1/collections/{}/events", a.base, a.collection);
    for _ in 0..50 {
        let res = client.get(&url).bearer_auth(&a.token).send().await;
        match res {
            Ok(mut r) if r.status() == 200 => {
                // The first chunk (`retry:`) means the stream is open.
                let _ = r.chunk().await;
                opened.fetch_add(1, Ordering::Relaxed);
                return Some(r);
            }
            Ok(r) => eprintln!("stream refused: {}", r.status()),
            Err(e) => eprintln!("stream failed: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Reads a stream, recording send-to-receipt latencies (µs) of the
/// events whose data carries `"t":<ns>`, until `stop` passes.
async fn follow(mut res: reqwest::Response, stop: Instant) -> Vec<u64> {
    let mut lat = Vec::new();
    let mut buf = Vec::<u8>::new();
    while let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(stop.into(), res.chunk()).await {
        let received = now_ns();
        buf.extend_from_slice(&chunk);
        // Whole lines only; the rest waits for the next chunk.
        let cut = match buf.iter().rposition(|b| *b == b'\n') {
            Some(i) => i + 1,
            None => continue,
        };
        for line in buf[..cut].split(|b| *b == b'\n') {
            let Some(data) = line.strip_prefix(b"data: ") else {
                continue;
            };
            let text = String::from_utf8_lossy(data);
            if let Some(rest) = text.split("\"t\":").nth(1) {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                if let Ok(sent) = digits.parse::<u128>() {
                    let us = received.saturating_sub(sent) / 1000;
                    lat.push(u64::try_from(us).unwrap_or(u64::MAX));
                }
            }
        }
        buf.drain(..cut);
    }
    lat
}

async fn latency(a: Args) {
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(usize::MAX)
        .build()
        .expect("client");
    let a = Arc::new(a);
    let opened = Arc::new(AtomicUsize::new(0));
    let mut streams = Vec::new();
    for _ in 0..a.subscribers {
        let (client, a, opened) = (client.clone(), a.clone(), opened.clone());
        streams.push(tokio::spawn(
            async move { open(&client, &a, &opened).await },
        ));
    }
    let mut responses = Vec::new();
    for s in streams {
        if let Some(r) = s.await.expect("task") {
            responses.push(r);
        }
    }
    let ready = responses.len();
    let settle = Duration::from_secs(1);
    let stop = Instant::now() + settle + Duration::from_secs(a.duration) + Duration::from_secs(3);
    let followers: Vec<_> = responses
        .into_iter()
        .map(|r| tokio::spawn(follow(r, stop)))
        .collect();
    tokio::time::sleep(settle).await;
    // The writer: one POST per tick, each on its own task (a slow answer
    // does not slow the rate), at most 256 in flight.
    let url = format!("{}/v1/collections/{}/documents", a.base, a.collection);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(256));
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / a.rate.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let end = started + Duration::from_secs(a.duration);
    let mut writes = Vec::new();
    let mut sent = 0u64;
    while Instant::now() < end {
        tick.tick().await;
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let (client, url, token) = (client.clone(), url.clone(), a.token.clone());
        sent += 1;
        let n = sent;
        writes.push(tokio::spawn(async move {
            let t = now_ns();
            let began = Instant::now();
            let r = client
                .post(&url)
                .bearer_auth(&token)
                .json(&json!({"t": t as u64, "n": n}))
                .send()
                .await;
            drop(permit);
            match r {
                Ok(r) if r.status() == 201 => Some(began.elapsed().as_micros() as u64),
                _ => None,
            }
        }));
    }
    let wrote_for = started.elapsed();
    let mut post_lat = Vec::new();
    let mut failed = 0u64;
    for w in writes {
        match w.await.expect("task") {
            Some(us) => post_lat.push(us),
            None => failed += 1,
        }
    }
    let mut all = Vec::new();
    for f in followers {
        all.extend(f.await.expect("task"));
    }
    all.sort_unstable();
    post_lat.sort_unstable();
    let ok_writes = post_lat.len() as u64;
    println!(
        "{}",
        json!({
            "subscribers": ready,
            "writes": ok_writes,
            "failed_writes": failed,
            "write_rate": ok_writes as f64 / wrote_for.as_secs_f64(),
            "deliveries": all.len(),
            "expected_deliveries": ok_writes as usize * ready,
            "delivery_p50_ms": percentile(&all, 0.50),
            "delivery_p99_ms": percentile(&all, 0.99),
            "delivery_max_ms": all.last().map_or(f64::NAN, |m| *m as f64 / 1000.0),
            "post_p50_ms": percentile(&post_lat, 0.50),
            "post_p99_ms": percentile(&post_lat, 0.99),
        })
    );
}

async fn idle(a: Args) {
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(usize::MAX)
        .build()
        .expect("client");
    let a = Arc::new(a);
    let opened = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut streams = Vec::new();
    for _ in 0..a.subscribers {
        let (client, a, opened) = (client.clone(), a.clone(), opened.clone());
        streams.push(tokio::spawn(
            async move { open(&client, &a, &opened).await },
        ));
    }
    let mut held = Vec::new();
    for s in streams {
        if let Some(r) = s.await.expect("task") {
            held.push(r);
        }
    }
    println!(
        "{}",
        json!({"ready": held.len(), "open_s": started.elapsed().as_secs_f64()})
    );
    // Held and read (keep-alives, any events): a stream nobody reads
    // would be a slow subscriber.
    let stop = Instant::now() + Duration::from_secs(a.hold);
    let readers: Vec<_> = held
        .into_iter()
        .map(|r| tokio::spawn(follow(r, stop)))
        .collect();
    for r in readers {
        let _ = r.await;
    }
}

fn main() {
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    match a.mode.as_str() {
        "latency" => rt.block_on(latency(a)),
        "idle" => rt.block_on(idle(a)),
        _ => {
            eprintln!(
                "usage: events_load latency|idle --base URL --token JWT [--collection NAME] [--subscribers N] [--rate W] [--duration S] [--hold S]"
            );
            std::process::exit(2);
        }
    }
}
