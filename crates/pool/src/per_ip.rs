//! Per-client-IP connection counts.
//!
//! Contract: [`PerIpLimiter::try_acquire`] succeeds while the address has fewer than the limit
//! open; each success is matched by one [`PerIpLimiter::release`]. Entries are removed when their
//! count reaches zero, so memory follows the number of distinct peers currently connected.
//!
//! Only consulted when `max_connections_per_ip` is set. The map is split into shards, each behind
//! its own short-held mutex, so peers on different shards never contend.

use std::collections::hash_map::{DefaultHasher, Entry};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Mutex;

const SHARDS: usize = 16;

/// Open-connection counts keyed by client IP.
#[derive(Debug, Default)]
pub struct PerIpLimiter {
    shards: [Mutex<HashMap<IpAddr, u32>>; SHARDS],
}

impl PerIpLimiter {
    fn shard(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, u32>> {
        let mut h = DefaultHasher::new();
        ip.hash(&mut h);
        &self.shards[(h.finish() as usize) % SHARDS]
    }

    /// Counts one more connection for `ip` unless it already has `limit` open.
    pub fn try_acquire(&self, ip: IpAddr, limit: u32) -> bool {
        let mut map = self.shard(&ip).lock().unwrap_or_else(|p| p.into_inner());
        let count = map.entry(ip).or_insert(0);
        if *count >= limit {
            if *count == 0 {
                map.remove(&ip);
            }
            return false;
        }
        *count += 1;
        true
    }

    /// Forgets one connection for `ip`.
    pub fn release(&self, ip: IpAddr) {
        let mut map = self.shard(&ip).lock().unwrap_or_else(|p| p.into_inner());
        if let Entry::Occupied(mut e) = map.entry(ip) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }

    /// Open connections for `ip`.
    pub fn count(&self, ip: IpAddr) -> u32 {
        let map = self.shard(&ip).lock().unwrap_or_else(|p| p.into_inner());
        map.get(&ip).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_each_address_separately_and_forgets_closed_ones() {
        let l = PerIpLimiter::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "::1".parse().unwrap();
        assert!(l.try_acquire(a, 2));
        assert!(l.try_acquire(a, 2));
        assert!(!l.try_acquire(a, 2));
        assert!(l.try_acquire(b, 2));
        l.release(a);
        assert!(l.try_acquire(a, 2));
        l.release(a);
        l.release(a);
        l.release(b);
        assert_eq!(l.count(a), 0);
        assert!(l.shards.iter().all(|s| s.lock().unwrap().is_empty()));
    }
}
