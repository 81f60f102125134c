//! Azure OpenAI: the deployment is the upstream model, every URL carries the `api-version`, and
//! the key travels in `api-key`.

use http::{HeaderName, HeaderValue};

use crate::kind::Kind;
use crate::op::{Op, Serving};
use crate::spec::{Endpoint, KeyFormat, Spec, sensitive, url_segment};

pub struct Azure;

impl Spec for Azure {
    fn kind(&self) -> Kind {
        Kind::AzureOpenAi
    }

    fn serving(&self, op: Op) -> Option<Serving> {
        super::openai_family(op, true)
    }

    fn url(
        &self,
        endpoint: &Endpoint<'_>,
        wire: Op,
        upstream_model: &str,
        _stream: bool,
    ) -> String {
        format!(
            "{}/openai/deployments/{}/{}?api-version={}",
            endpoint.base(),
            url_segment(upstream_model),
            wire.tail(),
            url_segment(endpoint.api_version)
        )
    }

    fn models_url(&self, endpoint: &Endpoint<'_>) -> String {
        format!(
            "{}/openai/models?api-version={}",
            endpoint.base(),
            url_segment(endpoint.api_version)
        )
    }

    fn credentials(
        &self,
        secret: &str,
        _anthropic_version: Option<&HeaderValue>,
    ) -> Option<Vec<(HeaderName, HeaderValue)>> {
        Some(vec![(
            HeaderName::from_static("api-key"),
            sensitive(secret)?,
        )])
    }

    fn key_format(&self) -> Option<KeyFormat> {
        Some(KeyFormat {
            matches: |k| k.len() == 32 && k.chars().all(|c| c.is_ascii_hexdigit()),
            expected: "an Azure OpenAI key is 32 hexadecimal characters",
        })
    }
}
