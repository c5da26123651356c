// Copyright 2026 Cloudflare, Inc.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
// http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

//! A cheap hasher for the pool's keys: group keys are already hashes (`Peer::reuse_hash()`)
//! and connection IDs are file descriptors. Neither is chosen by a remote party, so SipHash's
//! resistance to chosen keys buys nothing, while the pool hashes them several times per reuse.

use std::hash::{BuildHasherDefault, Hasher};

/// Multiply-rotate mixing (as FxHash does): one multiplication per integer written.
#[derive(Default, Clone, Copy)]
pub struct KeyHasher(u64);

impl KeyHasher {
    #[inline]
    fn add(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for KeyHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        bytes.iter().for_each(|b| self.add(*b as u64));
    }
    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }
    #[inline]
    fn write_i32(&mut self, n: i32) {
        self.add(n as u32 as u64);
    }
}

pub type BuildKeyHasher = BuildHasherDefault<KeyHasher>;

#[test]
fn small_ids_spread_over_shards() {
    use std::hash::BuildHasher;
    let shards: std::collections::HashSet<u64> = (3i32..19)
        .map(|fd| BuildKeyHasher::default().hash_one(fd) % 16)
        .collect();
    assert!(shards.len() >= 12, "{shards:?}");
}
