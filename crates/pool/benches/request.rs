//! What the pool's own bookkeeping costs one keep-alive HTTP/1.1 request, next to the two
//! operations it is made of: a read of the monotonic clock and a locked add. The socket, hyper
//! and the handler are left out, so this is the floor of what the pool adds to a request, to be
//! set against a whole request's CPU time (`bench/http1/run.sh`).
//! `cargo bench -p poolserve-pool --bench request`.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use poolserve_pool::{DefaultPolicy, Pool, PoolConfig};

fn parts(c: &mut Criterion) {
    c.bench_function("one monotonic clock read", |b| {
        b.iter(|| black_box(Instant::now()))
    });
    let counter = AtomicU64::new(0);
    c.bench_function("one locked add", |b| {
        b.iter(|| counter.fetch_add(black_box(1), Ordering::Relaxed))
    });
}

fn request(c: &mut Criterion) {
    let pool = Pool::new("bench", DefaultPolicy("http"), PoolConfig::default());
    let peer = Some("127.0.0.1:4000".parse().expect("literal address"));
    let Ok(guard) = pool.admit(peer) else {
        panic!("an empty pool refused a connection");
    };
    let tracker = guard.tracker();
    // What the socket wrapper and the service adapter report for one `GET /` on a kept-alive
    // connection: the head's first bytes, the request, its empty body, a sized response, the
    // end of that response, and the bytes once the response is flushed.
    c.bench_function("pool bookkeeping of one keep-alive request", |b| {
        b.iter(|| {
            tracker.bytes_read(black_box(78));
            let mut request = tracker.request_started();
            request.body_received();
            request.sized_response_started(false);
            black_box(request.should_close_connection());
            request.finish();
            tracker.bytes_written();
            tracker.report_bytes(78, 120);
        })
    });
    drop(guard);
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = parts, request
}
criterion_main!(benches);
