//! The scaled topology (seed 004) by simulation: producers -> ingest pods -> Kafka partitions ->
//! delivery pods (one consumer group) -> downstream, at a given offered rate.
//!
//! A time-stepped fluid model: every step, arrivals (Poisson) are spread over the ingest pods,
//! each pod works off its queue at the rate its cores allow (CPU per report as measured by the
//! ingest scenario, plus the Kafka produce cost the `kafka` scenario measures, with per-step
//! capacity noise for GC and neighbours), the produced reports go to partitions (spread evenly,
//! or keyed by tenant with a Zipf skew), and each live delivery pod drains its assigned
//! partitions at the rate its cores and each partition's throughput allow. Every queue is first
//! in, first out, so the model yields the queueing delay of every report from arrival to
//! delivery. What it leaves out: network and broker round trips (constant per report, not
//! load-dependent), downstream back-pressure, and replication traffic between brokers (sized
//! separately in BENCHMARKS.md).

use std::collections::VecDeque;

/// The per-report costs and capacities the model runs on; each says whether it was measured.
#[derive(Clone, Debug)]
pub struct Costs {
    /// CPU per report on the ingest path (HTTP, envelope, routing, 202), microseconds: measured.
    pub ingest_us: f64,
    /// CPU per report to produce it to Kafka: measured by the `kafka` scenario (a `--role ingest`
    /// process's CPU per report minus the ingest path), or assumed when it did not run.
    pub produce_us: f64,
    /// CPU per report on the delivery path (plugin, `_bulk`, results, bookkeeping): measured.
    pub deliver_us: f64,
    /// CPU per report to consume it from Kafka: measured by the `kafka` scenario (the `--role
    /// deliver` processes' CPU per report minus the delivery path), or assumed when it did not run.
    pub consume_us: f64,
    /// Bytes per report on the wire and in the log.
    pub report_bytes: f64,
    /// Sustained throughput of one partition, MB/s: assumed.
    pub partition_mb_s: f64,
    /// Relative standard deviation of a pod's capacity from one step to the next: assumed.
    pub jitter: f64,
}

/// How produced reports are spread over partitions.
#[derive(Clone, Copy, Debug)]
pub enum Keying {
    /// Sticky round-robin: every partition gets an equal share.
    Spread,
    /// Keyed by tenant: `tenants` tenants whose traffic follows a Zipf law with exponent `s`.
    ByTenant { tenants: usize, s: f64 },
}

#[derive(Clone, Debug)]
pub struct Topology {
    /// Offered reports per second.
    pub rate: f64,
    pub ingest_pods: usize,
    pub delivery_pods: usize,
    pub cores_per_pod: f64,
    pub partitions: usize,
    pub keying: Keying,
    /// One delivery pod stops at `.0` seconds; its partitions are reassigned to the others at
    /// `.1` seconds (the consumer group's session timeout).
    pub lose_delivery_pod: Option<(f64, f64)>,
    pub seconds: f64,
}

#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Reports delivered per second over the run.
    pub delivered_per_s: f64,
    /// Reports waiting anywhere at the end, and the most at any time.
    pub backlog_end: f64,
    pub backlog_max: f64,
    /// Queueing delay from arrival to delivery of the delivered reports, ms.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Mean CPU use of the ingest tier and of the busiest delivery pod, 0..1.
    pub ingest_util: f64,
    pub delivery_util_max: f64,
    /// Offered load on the busiest partition relative to its throughput.
    pub hottest_partition_load: f64,
    /// Seconds from the reassignment until the backlog was back under 100 ms of traffic.
    pub recovered_after_s: Option<f64>,
}

impl Outcome {
    /// The backlog at the end is under 100 ms of the offered traffic.
    pub fn keeps_up(&self, rate: f64) -> bool {
        self.backlog_end < rate * 0.1
    }
}

/// Pods needed for `rate` when each pod's cores run at `target_util`: the sizing on paper.
pub fn size(rate: f64, c: &Costs, cores_per_pod: f64, target_util: f64) -> (usize, usize, usize) {
    let per_pod = |us: f64| cores_per_pod * 1e6 / us * target_util;
    let ingest = (rate / per_pod(c.ingest_us + c.produce_us)).ceil() as usize;
    let delivery = (rate / per_pod(c.deliver_us + c.consume_us)).ceil() as usize;
    let by_bytes = rate * c.report_bytes / (c.partition_mb_s * 1e6);
    let partitions = (by_bytes.max(delivery as f64) * 1.25).ceil().max(1.0) as usize;
    (ingest, delivery, partitions.next_power_of_two())
}

/// A small deterministic generator (splitmix64), so every run of the model is the same.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A standard normal draw (Box-Muller).
    fn normal(&mut self) -> f64 {
        let u = self.next().max(1e-12);
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * self.next()).cos()
    }

    /// A Poisson count with a large mean (normal approximation).
    fn poisson(&mut self, mean: f64) -> f64 {
        (mean + mean.sqrt() * self.normal()).max(0.0)
    }
}

/// A first-in-first-out queue of (arrival step, reports).
#[derive(Default)]
struct Fifo {
    q: VecDeque<(u32, f64)>,
    len: f64,
}

impl Fifo {
    fn push(&mut self, at: u32, n: f64) {
        if n <= 0.0 {
            return;
        }
        match self.q.back_mut() {
            Some((t, m)) if *t == at => *m += n,
            _ => self.q.push_back((at, n)),
        }
        self.len += n;
    }

    /// Take up to `n` reports, oldest first, passing each chunk to `out`; returns how many.
    fn take(&mut self, mut n: f64, mut out: impl FnMut(u32, f64)) -> f64 {
        let mut taken = 0.0;
        while n > 1e-9 {
            let Some((at, m)) = self.q.front_mut() else { break };
            let k = m.min(n);
            out(*at, k);
            *m -= k;
            n -= k;
            taken += k;
            if *m <= 1e-9 {
                self.q.pop_front();
            }
        }
        self.len = (self.len - taken).max(0.0);
        taken
    }
}

/// Share of the traffic each partition receives.
fn partition_weights(keying: Keying, partitions: usize) -> Vec<f64> {
    match keying {
        Keying::Spread => vec![1.0 / partitions as f64; partitions],
        Keying::ByTenant { tenants, s } => {
            let mut w = vec![0.0; partitions];
            let weights: Vec<f64> = (1..=tenants).map(|k| 1.0 / (k as f64).powf(s)).collect();
            let total: f64 = weights.iter().sum();
            for (k, x) in weights.iter().enumerate() {
                // The key's hash picks the partition (Kafka's default partitioner does murmur2).
                let h = (k as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 17;
                w[(h % partitions as u64) as usize] += x / total;
            }
            w
        }
    }
}

/// Run the model.
pub fn simulate(t: &Topology, c: &Costs) -> Outcome {
    const STEP_S: f64 = 0.002;
    let steps = (t.seconds / STEP_S) as u32;
    let mut rng = Rng(0x5EED);
    let weights = partition_weights(t.keying, t.partitions);
    let per_step = |us: f64| t.cores_per_pod * STEP_S * 1e6 / us;
    let ingest_cap = per_step(c.ingest_us + c.produce_us);
    let deliver_cap = per_step(c.deliver_us + c.consume_us);
    let partition_cap = c.partition_mb_s * 1e6 / c.report_bytes * STEP_S;

    let mut ingest: Vec<Fifo> = (0..t.ingest_pods).map(|_| Fifo::default()).collect();
    let mut parts: Vec<Fifo> = (0..t.partitions).map(|_| Fifo::default()).collect();
    let mut owner: Vec<Option<usize>> = (0..t.partitions).map(|p| Some(p % t.delivery_pods)).collect();
    let mut alive = vec![true; t.delivery_pods];
    // Delay histogram in whole steps.
    let mut hist: Vec<f64> = Vec::new();
    let (mut delivered, mut ingest_used, mut backlog_max) = (0.0, 0.0, 0.0f64);
    let mut deliver_used = vec![0.0; t.delivery_pods];
    let mut recovered_at: Option<u32> = None;
    let (fail_at, reassign_at) = match t.lose_delivery_pod {
        Some((a, b)) => ((a / STEP_S) as u32, (b / STEP_S) as u32),
        None => (u32::MAX, u32::MAX),
    };
    let mut produced: Vec<(u32, f64)> = Vec::new();
    let mut mine: Vec<usize> = Vec::new();

    for step in 0..steps {
        if step == fail_at && t.delivery_pods > 1 {
            alive[0] = false;
            owner.iter_mut().filter(|o| **o == Some(0)).for_each(|o| *o = None);
        }
        if step == reassign_at {
            // Cooperative-sticky: only the orphaned partitions move, round-robin over the live pods.
            let live: Vec<usize> = (0..t.delivery_pods).filter(|i| alive[*i]).collect();
            for (k, o) in owner.iter_mut().filter(|o| o.is_none()).enumerate() {
                *o = Some(live[k % live.len()]);
            }
        }
        // Arrivals, spread by the load balancer.
        for q in ingest.iter_mut() {
            q.push(step, rng.poisson(t.rate * STEP_S / t.ingest_pods as f64));
        }
        // Ingest pods produce to Kafka.
        produced.clear();
        for q in ingest.iter_mut() {
            let cap = ingest_cap * (1.0 + c.jitter * rng.normal()).max(0.0);
            ingest_used += q.take(cap, |at, n| match produced.iter_mut().find(|(a, _)| *a == at) {
                Some((_, m)) => *m += n,
                None => produced.push((at, n)),
            }) / ingest_cap;
        }
        for (p, q) in parts.iter_mut().enumerate() {
            for (at, n) in &produced {
                q.push(*at, n * weights[p]);
            }
        }
        // Delivery pods drain their partitions, water-filling their capacity over them.
        for pod in (0..t.delivery_pods).filter(|i| alive[*i]) {
            mine.clear();
            mine.extend((0..t.partitions).filter(|p| owner[*p] == Some(pod)));
            let mut budget = deliver_cap * (1.0 + c.jitter * rng.normal()).max(0.0);
            let mut room: Vec<f64> = mine.iter().map(|p| parts[*p].len.min(partition_cap)).collect();
            for _ in 0..4 {
                let wanting = room.iter().filter(|r| **r > 1e-9).count();
                if wanting == 0 || budget <= 1e-9 {
                    break;
                }
                let share = budget / wanting as f64;
                for (i, p) in mine.iter().enumerate() {
                    let n = room[i].min(share);
                    if n <= 1e-9 {
                        continue;
                    }
                    let got = parts[*p].take(n, |at, k| {
                        let d = (step - at) as usize;
                        if hist.len() <= d {
                            hist.resize(d + 1, 0.0);
                        }
                        hist[d] += k;
                    });
                    room[i] -= got;
                    budget -= got;
                    delivered += got;
                    deliver_used[pod] += got / deliver_cap;
                }
            }
        }
        let backlog: f64 = ingest.iter().chain(parts.iter()).map(|q| q.len).sum();
        backlog_max = backlog_max.max(backlog);
        if step > reassign_at && recovered_at.is_none() && backlog < t.rate * 0.1 {
            recovered_at = Some(step);
        }
    }

    let total: f64 = hist.iter().sum();
    let quantile = |q: f64| {
        let mut acc = 0.0;
        for (d, n) in hist.iter().enumerate() {
            acc += n;
            if acc >= q * total {
                return d as f64 * STEP_S * 1000.0;
            }
        }
        hist.len() as f64 * STEP_S * 1000.0
    };
    let max_w = weights.iter().cloned().fold(0.0, f64::max);
    Outcome {
        delivered_per_s: delivered / t.seconds,
        backlog_end: ingest.iter().chain(parts.iter()).map(|q| q.len).sum(),
        backlog_max,
        p50_ms: quantile(0.5),
        p99_ms: quantile(0.99),
        max_ms: hist.iter().rposition(|n| *n > 0.0).unwrap_or(0) as f64 * STEP_S * 1000.0,
        ingest_util: ingest_used / (steps as f64 * t.ingest_pods as f64),
        delivery_util_max: deliver_used.iter().cloned().fold(0.0, f64::max) / steps as f64,
        hottest_partition_load: max_w * t.rate * STEP_S / partition_cap,
        recovered_after_s: recovered_at.filter(|_| reassign_at != u32::MAX).map(|s| (s - reassign_at) as f64 * STEP_S),
    }
}

/// The smallest pod count in `1..=hi` for which `keeps_up(n)` holds (it is monotone in n).
pub fn fewest(hi: usize, keeps_up: impl Fn(usize) -> bool) -> Option<usize> {
    let (mut lo, mut hi) = (1, hi);
    if !keeps_up(hi) {
        return None;
    }
    while lo < hi {
        let mid = (lo + hi) / 2;
        if keeps_up(mid) { hi = mid } else { lo = mid + 1 }
    }
    Some(lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn costs() -> Costs {
        Costs {
            ingest_us: 30.0,
            produce_us: 5.0,
            deliver_us: 15.0,
            consume_us: 2.0,
            report_bytes: 1800.0,
            partition_mb_s: 10.0,
            jitter: 0.1,
        }
    }

    fn topology(rate: f64, ingest_pods: usize, delivery_pods: usize) -> Topology {
        Topology {
            rate,
            ingest_pods,
            delivery_pods,
            cores_per_pod: 2.0,
            partitions: 64,
            keying: Keying::Spread,
            lose_delivery_pod: None,
            seconds: 5.0,
        }
    }

    #[test]
    fn enough_pods_deliver_everything_offered_with_short_delays() {
        // 100k/s needs 100k x 35 us = 3.5 cores of ingest and 1.7 cores of delivery.
        let o = simulate(&topology(100_000.0, 3, 2), &costs());
        assert!(o.keeps_up(100_000.0), "{o:?}");
        assert!((o.delivered_per_s - 100_000.0).abs() < 2_000.0, "{o:?}");
        assert!(o.p99_ms < 50.0, "{o:?}");
        assert!(o.ingest_util > 0.5 && o.ingest_util < 0.75, "{o:?}");
    }

    #[test]
    fn too_few_pods_fall_behind_at_the_rate_their_cores_allow() {
        // One ingest pod handles 2 cores / 35 us = 57k/s.
        let o = simulate(&topology(100_000.0, 1, 2), &costs());
        assert!(!o.keeps_up(100_000.0));
        assert!((o.delivered_per_s - 57_000.0).abs() < 3_000.0, "{o:?}");
    }

    #[test]
    fn a_hot_tenant_overloads_its_partition_whatever_the_pod_count() {
        let mut t = topology(100_000.0, 3, 4);
        t.keying = Keying::ByTenant { tenants: 1000, s: 1.0 };
        let o = simulate(&t, &costs());
        assert!(o.hottest_partition_load > 1.0, "{o:?}");
        assert!(!o.keeps_up(100_000.0), "{o:?}");
    }

    #[test]
    fn a_lost_delivery_pod_builds_a_backlog_that_drains_after_reassignment() {
        let mut t = topology(100_000.0, 3, 3);
        t.seconds = 10.0;
        t.lose_delivery_pod = Some((1.0, 3.0));
        let o = simulate(&t, &costs());
        // A third of the partitions wait two seconds: about 67k reports.
        assert!(o.backlog_max > 50_000.0, "{o:?}");
        assert!(o.keeps_up(100_000.0), "{o:?}");
        assert!(o.recovered_after_s.is_some_and(|s| s < 7.0), "{o:?}");
        assert!(o.max_ms >= 2000.0, "{o:?}");
    }

    #[test]
    fn fewest_finds_the_threshold() {
        assert_eq!(fewest(100, |n| n >= 37), Some(37));
        assert_eq!(fewest(10, |n| n >= 37), None);
    }
}
