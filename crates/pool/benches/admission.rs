//! Admission fast path: admit + release of one connection, uncontended and with two threads
//! contending for the same pool. `cargo bench -p poolserve-pool --bench admission`.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use poolserve_pool::{AdmissionCounter, DefaultPolicy, Pool, PoolConfig};

fn pool() -> Pool<DefaultPolicy> {
    Pool::new("bench", DefaultPolicy("http"), PoolConfig::default())
}

fn uncontended(c: &mut Criterion) {
    let counter = AdmissionCounter::new(Some(10_000));
    c.bench_function("counter admit+release", |b| {
        b.iter(|| {
            if black_box(counter.try_admit()).is_ok() {
                counter.release(false);
            }
        })
    });
    let pool = pool();
    let peer = Some("127.0.0.1:4000".parse().expect("literal address"));
    c.bench_function("pool admit+drop guard", |b| {
        b.iter(|| drop(black_box(pool.admit(peer))))
    });
}

/// Measures one thread's admit+release while a second thread does the same on the same pool,
/// so every compare-and-swap races with the other core.
fn contended(c: &mut Criterion) {
    let pool = pool();
    let peer = Some("127.0.0.1:4000".parse().expect("literal address"));
    let stop = Arc::new(AtomicBool::new(false));
    let rival = {
        let (pool, stop) = (pool.clone(), stop.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..1_000 {
                    drop(black_box(pool.admit(peer)));
                }
            }
        })
    };
    c.bench_function("pool admit+drop guard, 2 threads", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                drop(black_box(pool.admit(peer)));
            }
            start.elapsed()
        })
    });
    stop.store(true, Ordering::Relaxed);
    rival.join().ok();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = uncontended, contended
}
criterion_main!(benches);
