//! Samples read out of Prometheus text exposition (what `/metrics` serves and what
//! `prometheus::TextEncoder` writes), so a test can assert on one counter without caring about
//! the order of lines or labels. Comment lines (`# HELP`, `# TYPE`) and lines that are not a
//! sample are skipped; label values are unescaped (`\\`, `\"`, `\n`).

/// One sample line: `name{k="v",…} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The series name (for histograms, with its `_bucket`/`_sum`/`_count` suffix).
    pub name: String,
    /// The labels, sorted by name, values unescaped.
    pub labels: Vec<(String, String)>,
    /// The value (`+Inf`, `NaN` included).
    pub value: f64,
}

impl Sample {
    /// Whether the sample carries every one of `labels` (and maybe others).
    pub fn has_labels(&self, labels: &[(&str, &str)]) -> bool {
        labels
            .iter()
            .all(|(k, v)| self.labels.iter().any(|(n, w)| n == k && w == v))
    }

    /// Whether the sample carries exactly `labels`, in any order.
    pub fn has_exactly(&self, labels: &[(&str, &str)]) -> bool {
        self.labels.len() == labels.len() && self.has_labels(labels)
    }
}

/// Every sample in `text`, in order.
pub fn samples(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

/// The value of the sample `name{labels}` in `text`, if present (labels in any order; the sample
/// must carry exactly these labels).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(text)
        .into_iter()
        .find(|s| s.name == name && s.has_exactly(labels))
        .map(|s| s.value)
}

/// The sum of the samples of `name` in `text` whose labels include all of `labels` (0 when there
/// is none: a counter that was never touched reads as zero).
pub fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples(text)
        .iter()
        .filter(|s| s.name == name && s.has_labels(labels))
        .map(|s| s.value)
        .sum()
}

/// One line as a sample, or `None` for comments, blank lines and anything malformed.
fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(inner)?;
        labels = parsed;
        rest = after;
    }
    // A timestamp may follow the value; the value is the first field.
    let value = rest.split_whitespace().next()?.parse().ok()?;
    labels.sort();
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// `k="v",k2="v2"}` → the pairs and what follows the closing brace.
fn parse_labels(mut s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start_matches([' ', ',']);
        if let Some(after) = s.strip_prefix('}') {
            return Some((labels, after));
        }
        let (key, after_key) = s.split_once('=')?;
        let quoted = after_key.strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = quoted.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((key.trim().to_string(), value));
        s = &quoted[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# HELP tether_requests_total Requests.
# TYPE tether_requests_total counter
tether_requests_total{direction=\"inbound\",code=\"200\"} 3
tether_requests_total{code=\"403\",direction=\"inbound\"} 2
tether_requests_total{code=\"200\",direction=\"outbound\"} 5
tether_crl_number 7
tether_odd{path=\"a \\\"b\\\", c\"} 1.5 1700000000
";

    #[test]
    fn metric_wants_exactly_the_labels_in_any_order() {
        let labels = [("code", "200"), ("direction", "inbound")];
        assert_eq!(metric(TEXT, "tether_requests_total", &labels), Some(3.0));
        assert_eq!(
            metric(TEXT, "tether_requests_total", &[("code", "200")]),
            None
        );
        assert_eq!(metric(TEXT, "tether_crl_number", &[]), Some(7.0));
        assert_eq!(metric(TEXT, "tether_absent", &[]), None);
    }

    #[test]
    fn sum_adds_every_sample_that_has_the_labels() {
        assert_eq!(sum(TEXT, "tether_requests_total", &[]), 10.0);
        let inbound = [("direction", "inbound")];
        assert_eq!(sum(TEXT, "tether_requests_total", &inbound), 5.0);
        assert_eq!(sum(TEXT, "tether_absent", &[]), 0.0);
    }

    #[test]
    fn quoted_values_are_unescaped_and_timestamps_ignored() {
        let want = [("path", "a \"b\", c")];
        assert_eq!(metric(TEXT, "tether_odd", &want), Some(1.5));
        assert_eq!(samples(TEXT).len(), 5, "comments are not samples");
    }
}
