//! `Range: bytes=...` parsing (one range; RFC 9110 §14.1.2). Several ranges are answered with
//! the whole representation, which the RFC allows.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable range: send everything.
    Full,
    /// Bytes `start..end` (end exclusive).
    Partial { start: u64, end: u64 },
    /// A syntactically valid range that lies outside the content: 416.
    Unsatisfiable,
}

pub fn parse_range(header: Option<&str>, len: u64) -> RangeRequest {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else { return RangeRequest::Full };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else { return RangeRequest::Full };
    let (first, last) = (first.trim(), last.trim());
    match (first.is_empty(), last.is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => match last.parse::<u64>() {
            Ok(0) => RangeRequest::Unsatisfiable,
            Ok(_) if len == 0 => RangeRequest::Unsatisfiable,
            Ok(suffix) => RangeRequest::Partial { start: len.saturating_sub(suffix), end: len },
            Err(_) => RangeRequest::Full,
        },
        // bytes=A- or bytes=A-B
        (false, _) => {
            let Ok(start) = first.parse::<u64>() else { return RangeRequest::Full };
            let end = if last.is_empty() {
                len
            } else {
                match last.parse::<u64>() {
                    Ok(last) if last >= start => last.saturating_add(1).min(len),
                    _ => return RangeRequest::Full,
                }
            };
            if start >= len {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Partial { start, end }
            }
        }
        (true, true) => RangeRequest::Full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeRequest::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 100), Full);
        assert_eq!(parse_range(Some("bytes=0-9"), 100), Partial { start: 0, end: 10 });
        assert_eq!(parse_range(Some("bytes=90-"), 100), Partial { start: 90, end: 100 });
        assert_eq!(parse_range(Some("bytes=90-200"), 100), Partial { start: 90, end: 100 });
        assert_eq!(parse_range(Some("bytes=-10"), 100), Partial { start: 90, end: 100 });
        assert_eq!(parse_range(Some("bytes=-1000"), 100), Partial { start: 0, end: 100 });
        assert_eq!(parse_range(Some("bytes=100-"), 100), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 100), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=5-2"), 100), Full);
        assert_eq!(parse_range(Some("bytes=0-1,5-6"), 100), Full);
        assert_eq!(parse_range(Some("items=0-1"), 100), Full);
    }
}
