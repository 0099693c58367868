//! A budget on how far a YAML body expands: aliases (`*a`) repeat what their anchor (`&a`)
//! names, so a small body can stand for a huge document ("billion laughs"; yaml_serde caps
//! the number of alias jumps, not the nodes they repeat, so 60 KB can still become 10^8
//! nodes). Before a body is read into its type, one pass counts its nodes, aliases expanded,
//! and stops at [`max_nodes`]: a body without aliases never comes near it.

use std::cell::Cell;
use std::fmt;

use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};

/// The most nodes a YAML body of `len` bytes may expand to: twice its length, since a node
/// written out takes at least one byte (`[1,2]`, `{a,b}`), plus room for a tiny body.
pub fn max_nodes(len: usize) -> u64 {
    u64::try_from(len)
        .unwrap_or(u64::MAX)
        .saturating_mul(2)
        .saturating_add(64)
}

/// `Err` with the budget when `bytes`, aliases expanded, has more than [`max_nodes`] nodes.
/// A body that does not parse is left to the typed read, which says where.
pub fn check_expansion(bytes: &[u8]) -> Result<(), u64> {
    let budget = max_nodes(bytes.len());
    let left = Cell::new(budget);
    let exhausted = Cell::new(false);
    let count = Count {
        left: &left,
        exhausted: &exhausted,
    };
    // Only running out matters here: any other error is the typed read's to report.
    let _ = count.deserialize(yaml_serde::Deserializer::from_slice(bytes));
    if exhausted.get() {
        Err(budget)
    } else {
        Ok(())
    }
}

/// Counts the nodes it visits down from `left`, failing when none are left.
#[derive(Clone, Copy)]
struct Count<'a> {
    left: &'a Cell<u64>,
    exhausted: &'a Cell<bool>,
}

impl Count<'_> {
    fn take<E: de::Error>(self) -> Result<(), E> {
        match self.left.get().checked_sub(1) {
            Some(left) => {
                self.left.set(left);
                Ok(())
            }
            None => {
                self.exhausted.set(true);
                Err(E::custom("the YAML body expands past its node budget"))
            }
        }
    }
}

impl<'de> DeserializeSeed<'de> for Count<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

macro_rules! count_scalars {
    ($($method:ident: $ty:ty),* $(,)?) => {$(
        fn $method<E: de::Error>(self, _: $ty) -> Result<(), E> {
            self.take()
        }
    )*};
}

impl<'de> Visitor<'de> for Count<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML node")
    }

    count_scalars! {
        visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_i128: i128, visit_u128: u128,
        visit_f64: f64, visit_str: &str, visit_bytes: &[u8],
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.take()
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.take()
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.take()?;
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.take()?;
        while map.next_key_seed(self)?.is_some() {
            map.next_value_seed(self)?;
        }
        Ok(())
    }

    /// A tagged node (`!tag value`).
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        self.take()?;
        let ((), variant) = data.variant_seed(self)?;
        variant.newtype_variant_seed(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `depth` levels of anchors, each a list of `width` aliases of the one below.
    fn laughs(depth: usize, width: usize) -> String {
        let mut body = "l0: &l0 [lol]\n".to_owned();
        for level in 1..=depth {
            let aliases = vec![format!("*l{}", level - 1); width].join(", ");
            body.push_str(&format!("l{level}: &l{level} [{aliases}]\n"));
        }
        body
    }

    #[test]
    fn aliases_that_multiply_are_refused_and_plain_documents_pass() {
        let bomb = laughs(9, 10);
        assert!(bomb.len() < 1_000, "{}", bomb.len());
        assert_eq!(check_expansion(bomb.as_bytes()), Err(max_nodes(bomb.len())));
        // A few aliases that stay within the budget are fine.
        assert_eq!(check_expansion(laughs(1, 3).as_bytes()), Ok(()));
        for plain in [
            "name: x\nsteps:\n  - name: a\n    action: noop\n",
            "{a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q,r,s,t,u,v,w,x,y,z}",
            "[1,2,3,4,5,6,7,8,9,0,1,2,3,4,5,6,7,8,9,0,1,2,3,4,5,6,7,8,9,0,1,2,3]",
            "",
            "not: [valid",
        ] {
            assert_eq!(check_expansion(plain.as_bytes()), Ok(()), "{plain}");
        }
    }
}
