//! The quote engine alone (CONTRACT.md section 10: at least 1,000,000 quotes/s on one core):
//! `cargo bench --bench quote`. `invoicer bench` prints the same figure among the others.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use invoicer::bench::quotes::sample;
use invoicer::period::Period;
use invoicer::quote::quote_tenant;

fn quote(c: &mut Criterion) {
    let (tenant, catalog, subs) = sample();
    let period = Period::parse_month("2026-04").expect("a month");
    let mut group = c.benchmark_group("quote engine");
    group.throughput(Throughput::Elements(1));
    group.bench_function("one subscription, base + add-on + 2 overages + GST", |b| {
        b.iter(|| quote_tenant(&tenant, &subs, &catalog, period).expect("prices"))
    });
    group.finish();
}

criterion_group!(benches, quote);
criterion_main!(benches);
