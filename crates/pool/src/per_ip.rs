//! Per-client-IP connection counts.
//!
//! Contract: [`PerIpLimiter::try_acquire`] succeeds while the key has fewer than the limit
//! open; each success is matched by one [`PerIpLimiter::release`] of the same key. Entries are
//! removed when their count reaches zero, so memory follows the number of distinct clients
//! currently connected. A client is keyed by [`PerIpLimiter::key`]: an IPv4 address whole, an
//! IPv6 address by its prefix (a host commonly holds a whole /64, and would otherwise have
//! 2^64 addresses to spread its connections over).
//!
//! Only consulted when `max_connections_per_ip` is set. The map is split into shards, each behind
//! its own short-held mutex, so peers on different shards never contend.

use std::collections::hash_map::{DefaultHasher, Entry};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;

const SHARDS: usize = 16;

/// Open-connection counts keyed by client IP.
#[derive(Debug, Default)]
pub struct PerIpLimiter {
    shards: [Mutex<HashMap<IpAddr, u32>>; SHARDS],
}

impl PerIpLimiter {
    /// The key a client at `ip` is counted under: an IPv4 address (an IPv4-mapped IPv6 one
    /// included, as a dual-stack listener sees IPv4 clients) whole; an IPv6 address cut to its
    /// first `v6_prefix` bits (at most 128).
    pub fn key(ip: IpAddr, v6_prefix: u8) -> IpAddr {
        match ip {
            IpAddr::V4(_) => ip,
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let bits = u32::from(v6_prefix.min(128));
                    let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                    IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
                }
            },
        }
    }

    fn shard(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, u32>> {
        let mut h = DefaultHasher::new();
        ip.hash(&mut h);
        &self.shards[(h.finish() as usize) % SHARDS]
    }

    /// Counts one more connection for `ip` (a [`PerIpLimiter::key`]) unless it already has
    /// `limit` open.
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

    /// Forgets one connection for `ip`, the key it was counted under.
    pub fn release(&self, ip: IpAddr) {
        let mut map = self.shard(&ip).lock().unwrap_or_else(|p| p.into_inner());
        if let Entry::Occupied(mut e) = map.entry(ip) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }

    /// Open connections counted under `ip`.
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

    #[test]
    fn an_ipv6_client_is_keyed_by_its_prefix_an_ipv4_one_by_its_address() {
        let key = |ip: &str, prefix| PerIpLimiter::key(ip.parse().unwrap(), prefix);
        let ip = |ip: &str| ip.parse::<IpAddr>().unwrap();
        // One /64: one client, whatever its interface identifiers.
        assert_eq!(key("2001:db8:1:2:aaaa::1", 64), ip("2001:db8:1:2::"));
        assert_eq!(
            key("2001:db8:1:2:aaaa::1", 64),
            key("2001:db8:1:2:ffff:1:2:3", 64)
        );
        assert_ne!(key("2001:db8:1:2::1", 64), key("2001:db8:1:3::1", 64));
        // Other lengths, the bounds included.
        assert_eq!(key("2001:db8:1:2::1", 48), ip("2001:db8:1::"));
        assert_eq!(key("2001:db8:1:2::1", 128), ip("2001:db8:1:2::1"));
        assert_eq!(key("2001:db8::1", 1), ip("::"));
        assert_eq!(key("ffff::1", 1), ip("8000::"));
        assert_eq!(key("::1", 64), ip("::"));
        // IPv4, and IPv4 seen through a dual-stack socket: the whole address.
        assert_eq!(key("192.0.2.7", 64), ip("192.0.2.7"));
        assert_eq!(key("::ffff:192.0.2.7", 64), ip("192.0.2.7"));
        assert_ne!(key("::ffff:192.0.2.7", 64), key("::ffff:192.0.2.8", 64));
    }
}
