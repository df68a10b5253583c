//! Reading a service's `GET /metrics`: a parser of the Prometheus text exposition format, enough
//! for tests to look samples up by name and labels (comments and timestamps are skipped).

use std::collections::BTreeMap;
use std::net::SocketAddr;

/// Content type every service answers `/metrics` with.
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4";

/// One sample: a name, its labels and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name, with any `_bucket`, `_sum` or `_count` suffix.
    pub name: String,
    /// Label names and values.
    pub labels: BTreeMap<String, String>,
    /// The value.
    pub value: f64,
}

impl Sample {
    /// The value of label `key`, if the sample has it.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }
}

/// Every sample of one scrape.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    /// The samples, in the order they came.
    pub samples: Vec<Sample>,
}

impl Scrape {
    /// Parses a scrape; an error names the first line that is not a sample, comment or blank.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let samples = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(|line| parse_sample(line).ok_or_else(|| anyhow::anyhow!("not a sample: {line:?}")))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { samples })
    }

    /// The samples named `name` that carry every one of `labels` (and possibly more).
    pub fn matching<'a>(&'a self, name: &'a str, labels: &'a [(&'a str, &'a str)]) -> impl Iterator<Item = &'a Sample> {
        self.samples.iter().filter(move |sample| {
            sample.name == name && labels.iter().all(|(key, value)| sample.label(key) == Some(*value))
        })
    }

    /// The sum of the values of the samples [`Scrape::matching`] `name` and `labels`; 0 when none
    /// does.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|sample| sample.value).sum()
    }

    /// The value of the one sample matching `name` and `labels`; `None` if none or several do.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut matching = self.matching(name, labels);
        let first = matching.next()?;
        matching.next().is_none().then_some(first.value)
    }
}

/// `GET /metrics` on the service at `address`, parsed; an error unless it answers 200 in the
/// text format.
pub async fn scrape(address: SocketAddr) -> anyhow::Result<Scrape> {
    let response = crate::get(format!("http://{address}/metrics")).await?;
    anyhow::ensure!(response.status() == 200, "GET /metrics answered {}", response.status());
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    anyhow::ensure!(content_type == TEXT_FORMAT, "GET /metrics answered {content_type:?}");
    Scrape::parse(&response.text().await?)
}

fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let (name, mut rest) = line.split_at(name_end);
    let mut labels = BTreeMap::new();
    if let Some(inside) = rest.strip_prefix('{') {
        rest = inside;
        loop {
            rest = rest.trim_start_matches([',', ' ']);
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after_key) = rest.split_once("=\"")?;
            let (value, after_value) = label_value(after_key)?;
            labels.insert(key.trim().to_owned(), value);
            rest = after_value;
        }
    }
    let value = rest.split_whitespace().next()?;
    Some(Sample {
        name: name.to_owned(),
        labels,
        value: parse_value(value)?,
    })
}

/// An escaped label value up to its closing quote, and the text after that quote.
fn label_value(text: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((index, c)) = chars.next() {
        match c {
            '"' => return Some((value, &text[index + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => value.push('\n'),
                escaped => value.push(escaped),
            },
            c => value.push(c),
        }
    }
    None
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        number => number.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP saga_http_requests_total HTTP requests answered
# TYPE saga_http_requests_total counter
saga_http_requests_total{service="order-service",method="POST",route="/orders",status="202"} 6
saga_http_requests_total{service="order-service",method="GET",route="/orders/{order_id}",status="200"} 2

saga_orders_placed_total 5
saga_duration_seconds_bucket{outcome="confirmed",le="+Inf"} 3
saga_odd{text="say \"hi\", a\\b\nc"} 1.5 1700000000000
"#;

    #[test]
    fn samples_are_found_by_name_and_some_of_their_labels() -> anyhow::Result<()> {
        let scrape = Scrape::parse(TEXT)?;
        assert_eq!(scrape.samples.len(), 5);
        assert_eq!(
            scrape.value("saga_http_requests_total", &[("method", "POST"), ("status", "202")]),
            Some(6.0)
        );
        assert_eq!(
            scrape.sum("saga_http_requests_total", &[("service", "order-service")]),
            8.0
        );
        assert_eq!(scrape.value("saga_http_requests_total", &[]), None, "two samples match");
        assert_eq!(scrape.value("saga_orders_placed_total", &[]), Some(5.0));
        assert_eq!(scrape.sum("saga_orders_decided_total", &[]), 0.0);
        Ok(())
    }

    #[test]
    fn label_values_are_unescaped_and_timestamps_ignored() -> anyhow::Result<()> {
        let scrape = Scrape::parse(TEXT)?;
        let odd = scrape.matching("saga_odd", &[]).next().expect("the sample");
        assert_eq!(odd.label("text"), Some("say \"hi\", a\\b\nc"));
        assert_eq!(odd.value, 1.5);
        assert_eq!(
            scrape.value("saga_duration_seconds_bucket", &[("le", "+Inf")]),
            Some(3.0)
        );
        Ok(())
    }

    #[test]
    fn a_line_that_is_no_sample_is_an_error() {
        assert!(Scrape::parse("saga_orders_placed_total{outcome=\"x 1\n").is_err());
        assert!(Scrape::parse("saga_orders_placed_total five\n").is_err());
    }
}
