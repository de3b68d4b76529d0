//! `reuseport echo --service-ms SPEC`: a worker's own service time, added to every request it
//! answers, drawn per request from a distribution. What makes one worker of a bench scenario
//! slower than the others (docs/experiments.md); hidden from `--help`, like the rest of `echo`'s
//! bench knobs.

use std::{
    str::FromStr,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        OnceLock,
    },
    time::Duration,
};

/// A distribution of service times, in ms.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ServiceTime {
    /// `fixed:MS`
    Fixed(f64),
    /// `uniform:MIN:MAX`
    Uniform(f64, f64),
    /// `exp:MEAN`
    Exponential(f64),
    /// `bimodal:FAST:SLOW:SLOW_FRACTION`
    Bimodal(f64, f64, f64),
}

impl FromStr for ServiceTime {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let usage = || {
            format!(
                "{s:?}: give fixed:MS, uniform:MIN:MAX, exp:MEAN or bimodal:FAST:SLOW:FRACTION \
                 (milliseconds, a fraction in 0..=1)"
            )
        };
        let mut parts = s.split(':');
        let kind = parts.next().unwrap_or_default();
        let numbers: Vec<f64> = parts
            .map(|p| p.parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0))
            .collect::<Option<_>>()
            .ok_or_else(usage)?;
        match (kind, numbers.as_slice()) {
            ("fixed", &[ms]) => Ok(Self::Fixed(ms)),
            ("uniform", &[min, max]) if min <= max => Ok(Self::Uniform(min, max)),
            ("exp", &[mean]) => Ok(Self::Exponential(mean)),
            ("bimodal", &[fast, slow, fraction]) if fraction <= 1.0 => {
                Ok(Self::Bimodal(fast, slow, fraction))
            }
            _ => Err(usage()),
        }
    }
}

impl ServiceTime {
    /// One draw, given a uniform number in [0, 1).
    pub fn draw(&self, u: f64) -> Duration {
        let ms = match *self {
            Self::Fixed(ms) => ms,
            Self::Uniform(min, max) => min + u * (max - min),
            Self::Exponential(mean) => -(1.0 - u).ln() * mean,
            Self::Bimodal(fast, slow, fraction) => {
                if u < fraction {
                    slow
                } else {
                    fast
                }
            }
        };
        Duration::from_secs_f64((ms / 1e3).min(60.0))
    }
}

static SERVICE: OnceLock<ServiceTime> = OnceLock::new();
static STATE: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);

/// Sets this worker's service time (once, at start).
pub fn set(service: ServiceTime) {
    let _ = SERVICE.set(service);
    STATE.store(
        0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()),
        Relaxed,
    );
}

/// Sleeps this worker's own service time for one request, if it has one.
pub fn serve() {
    let Some(service) = SERVICE.get() else {
        return;
    };
    let x = STATE.fetch_add(0x9e37_79b9_7f4a_7c15, Relaxed);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let u = (z >> 11) as f64 / (1u64 << 53) as f64;
    let d = service.draw(u);
    if !d.is_zero() {
        std::thread::sleep(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_draw_in_range() {
        assert_eq!("fixed:5".parse(), Ok(ServiceTime::Fixed(5.0)));
        assert_eq!("uniform:1:3".parse(), Ok(ServiceTime::Uniform(1.0, 3.0)));
        assert_eq!(
            "bimodal:1:20:0.1".parse(),
            Ok(ServiceTime::Bimodal(1.0, 20.0, 0.1))
        );
        for bad in [
            "",
            "fixed",
            "fixed:-1",
            "uniform:3:1",
            "bimodal:1:2:3",
            "exp:x",
            "slow:1",
        ] {
            assert!(bad.parse::<ServiceTime>().is_err(), "{bad}");
        }
        let u = ServiceTime::Uniform(1.0, 3.0);
        assert_eq!(u.draw(0.5), Duration::from_millis(2));
        let b = ServiceTime::Bimodal(1.0, 20.0, 0.1);
        assert_eq!(b.draw(0.05), Duration::from_millis(20));
        assert_eq!(b.draw(0.5), Duration::from_millis(1));
    }
}
