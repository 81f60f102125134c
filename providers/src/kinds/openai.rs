//! OpenAI's own API.

use crate::kind::Kind;
use crate::op::{Op, Serving};
use crate::spec::{KeyFormat, Spec};

pub struct OpenAi;

impl Spec for OpenAi {
    fn kind(&self) -> Kind {
        Kind::OpenAi
    }

    fn serving(&self, op: Op) -> Option<Serving> {
        super::openai_family(op, true)
    }

    fn key_format(&self) -> Option<KeyFormat> {
        Some(KeyFormat {
            matches: |k| k.starts_with("sk-") && k.len() >= 20,
            expected: "an OpenAI key starts with sk- and has at least 20 characters",
        })
    }
}
