//! Redis Cluster hash slots: which of the 16384 slots a channel lives in (CRC16/XMODEM of the
//! channel, or of its `{hash tag}`, mod 16384, as the Redis Cluster specification defines it)
//! and which node serves each slot (the `CLUSTER SLOTS` reply, amended by MOVED redirects).
//! Pure data: no connection, no clock.
//!
//! Written here rather than taken from the `redis` crate: its `Slot::for_key` needs the crate's
//! `cluster` feature, which compiles its whole cluster client (and two more dependencies) for
//! this one function of a dozen lines.

/// Slots in a Redis Cluster.
pub(crate) const SLOTS: usize = 16384;

/// CRC16/XMODEM (polynomial 0x1021, initial value 0, no reflection), the table built at compile
/// time.
const TABLE: [u16; 256] = {
    let mut t = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
            bit += 1;
        }
        t[i] = crc;
        i += 1;
    }
    t
};

fn crc16(data: &[u8]) -> u16 {
    data.iter().fold(0u16, |crc, &b| (crc << 8) ^ TABLE[usize::from((crc >> 8) as u8 ^ b)])
}

/// The slot of a key or shard channel: only the part between the first `{` and the first `}`
/// after it is hashed when that part is not empty, so `{room}a` and `{room}b` share a slot.
pub(crate) fn slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter().position(|&b| b == b'}').map(|close| &rest[..close])
        })
        .filter(|tag| !tag.is_empty())
        .unwrap_or(key);
    crc16(hashed) % SLOTS as u16
}

/// A node: host and port, as the cluster names it.
pub(crate) type Node = (String, u16);

/// Which node serves each slot. Nodes are numbered in the order they were learnt, and a
/// number never changes while the map lives.
#[derive(Debug, Clone)]
pub(crate) struct SlotMap {
    nodes: Vec<Node>,
    /// Per slot, the index of its node in `nodes`; `NONE` for a slot nobody serves.
    owner: Box<[u16]>,
}

const NONE: u16 = u16::MAX;

impl SlotMap {
    /// Every slot served by `node`: a server that is not a cluster.
    pub(crate) fn single(node: Node) -> Self {
        Self { nodes: vec![node], owner: vec![0; SLOTS].into_boxed_slice() }
    }

    /// An empty map (no slot served) to fill with [`SlotMap::assign`].
    pub(crate) fn empty() -> Self {
        Self { nodes: Vec::new(), owner: vec![NONE; SLOTS].into_boxed_slice() }
    }

    /// The node's number, learning it if it is new.
    pub(crate) fn node_index(&mut self, node: Node) -> usize {
        match self.nodes.iter().position(|n| *n == node) {
            Some(i) => i,
            None => {
                self.nodes.push(node);
                self.nodes.len() - 1
            }
        }
    }

    /// Says slots `first..=last` are served by `node`.
    pub(crate) fn assign(&mut self, first: u16, last: u16, node: Node) {
        let i = self.node_index(node) as u16;
        let (first, last) = (usize::from(first), usize::from(last).min(SLOTS - 1));
        if first <= last {
            self.owner[first..=last].fill(i);
        }
    }

    /// Forgets every slot's node (the nodes keep their numbers).
    pub(crate) fn clear(&mut self) {
        self.owner.fill(NONE);
    }

    /// The number of the node serving `slot`, if any.
    pub(crate) fn owner(&self, slot: u16) -> Option<usize> {
        match self.owner.get(usize::from(slot)) {
            Some(&i) if i != NONE => Some(usize::from(i)),
            _ => None,
        }
    }

    pub(crate) fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    /// Nodes serving at least one slot.
    pub(crate) fn serving(&self) -> usize {
        let mut seen = vec![false; self.nodes.len()];
        for &i in self.owner.iter().filter(|&&i| i != NONE) {
            seen[usize::from(i)] = true;
        }
        seen.into_iter().filter(|&s| s).count()
    }

    /// Every node learnt (to ask for the map again when one of them is gone).
    pub(crate) fn nodes(&self) -> &[Node] {
        &self.nodes
    }
}

/// A MOVED or ASK redirect's details, `"<slot> <host>:<port>"`; an empty host (a node that
/// does not know its own address) means the node that answered, `asked`.
pub(crate) fn parse_redirect(details: &str, asked: &Node) -> Option<(u16, Node)> {
    let (slot, addr) = details.trim().split_once(' ')?;
    let slot: u16 = slot.parse().ok().filter(|&s| usize::from(s) < SLOTS)?;
    let (host, port) = addr.rsplit_once(':')?;
    let host = if host.is_empty() || host == "?" { asked.0.clone() } else { host.to_owned() };
    Some((slot, (host, port.parse().ok()?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_is_xmodem() {
        // The check value the Redis Cluster specification gives.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(crc16(b""), 0);
    }

    #[test]
    fn slots_of_known_keys() {
        // `CLUSTER KEYSLOT` answers (engine/tests/cluster.rs checks this function against a
        // live cluster too).
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        // 0x31C3 is under 16384: the slot is the CRC itself.
        assert_eq!(slot(b"123456789"), 0x31C3);
    }

    #[test]
    fn hash_tags_as_the_spec_says() {
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        // The first `{` and the first `}` after it.
        assert_eq!(slot(b"foo{bar}{zap}"), slot(b"bar"));
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
        // An empty tag: the whole key is hashed.
        assert_eq!(slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") % 16384);
        // No closing brace: the whole key.
        assert_eq!(slot(b"foo{bar"), crc16(b"foo{bar") % 16384);
    }

    #[test]
    fn maps_and_redirects() {
        let a = ("127.0.0.1".to_string(), 7000);
        let b = ("127.0.0.1".to_string(), 7001);
        let mut m = SlotMap::empty();
        assert_eq!(m.owner(0), None);
        m.assign(0, 8191, a.clone());
        m.assign(8192, 16383, b.clone());
        assert_eq!(
            (m.owner(0), m.owner(8191), m.owner(8192), m.owner(16383)),
            (Some(0), Some(0), Some(1), Some(1))
        );
        assert_eq!(m.serving(), 2);
        assert_eq!(parse_redirect("3999 127.0.0.1:7001", &a), Some((3999, b.clone())));
        assert_eq!(parse_redirect("3999 :7001", &a), Some((3999, ("127.0.0.1".into(), 7001))));
        assert_eq!(parse_redirect("99999 h:1", &a), None);
        assert_eq!(parse_redirect("nonsense", &a), None);
        let s = SlotMap::single(a);
        assert_eq!((s.owner(0), s.owner(16383)), (Some(0), Some(0)));
    }
}
