//! Cutting output lines into `TaskOutput` events that fit SNS.

/// A `TaskOutput` event's lines stay within this many encoded bytes: SNS takes at most
/// 256 KiB per message, and the rest of the event (ids, time, sequence) is small.
pub const OUTPUT_BATCH_BYTES: usize = 192 * 1024;

/// Splits `lines` into chunks whose lines, JSON-encoded with their quotes and commas,
/// add up to at most `max_bytes`, so the event that carries a chunk stays under the
/// limit whatever the lines hold. Order is kept. A line too long for a chunk on its own
/// is cut at character boundaries into pieces that fit.
pub fn batch_lines(lines: Vec<String>, max_bytes: usize) -> Vec<Vec<String>> {
    // Room for at least one character of the longest escape (`\u001f`) in quotes.
    let max_bytes = max_bytes.max(MIN_BUDGET);
    let mut chunks = Vec::new();
    let mut chunk = Vec::new();
    let mut used = 0;
    for line in lines {
        for piece in split_to_fit(line, max_bytes) {
            let cost = encoded_len(&piece);
            if used + cost > max_bytes && !chunk.is_empty() {
                chunks.push(std::mem::take(&mut chunk));
                used = 0;
            }
            used += cost;
            chunk.push(piece);
        }
    }
    if !chunk.is_empty() {
        chunks.push(chunk);
    }
    chunks
}

/// Quotes, a comma, and six bytes for the widest escaped character.
const MIN_BUDGET: usize = 3 + 6;

/// A line's bytes in a JSON array: its escaped text, two quotes and a comma.
fn encoded_len(line: &str) -> usize {
    line.chars().map(escaped_len).sum::<usize>() + 3
}

/// What serde_json writes for one character of a string.
fn escaped_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\u{8}' | '\u{c}' | '\n' | '\r' | '\t' => 2,
        c if u32::from(c) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

fn split_to_fit(line: String, max_bytes: usize) -> Vec<String> {
    if encoded_len(&line) <= max_bytes {
        return vec![line];
    }
    let mut pieces = Vec::new();
    let mut piece = String::new();
    let mut used = 3;
    for c in line.chars() {
        let cost = escaped_len(c);
        if used + cost > max_bytes {
            pieces.push(std::mem::take(&mut piece));
            used = 3;
        }
        used += cost;
        piece.push(c);
    }
    pieces.push(piece);
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(chunk: &[String]) -> usize {
        // The array's brackets replace the last comma and add one byte.
        serde_json::to_string(chunk).unwrap().len()
    }

    #[test]
    fn every_chunk_encodes_within_the_limit_and_nothing_is_lost() {
        let lines: Vec<String> = (0..5_000)
            .map(|i| format!("line {i}: \"quoted\" \\ tab\t ctrl\u{1} é 漢"))
            .collect();
        let chunks = batch_lines(lines.clone(), 4_096);
        assert!(chunks.len() > 1);
        for c in &chunks {
            assert!(encoded(c) <= 4_096 + 1, "{}", encoded(c));
        }
        assert_eq!(chunks.concat(), lines);
    }

    #[test]
    fn a_line_longer_than_the_limit_is_cut_in_order() {
        let long = "é".repeat(10_000) + "\n" + &"x".repeat(5_000);
        let chunks = batch_lines(vec!["a".into(), long.clone(), "b".into()], 1_000);
        for c in &chunks {
            assert!(encoded(c) <= 1_001, "{}", encoded(c));
        }
        let all = chunks.concat();
        assert_eq!(all.first().map(String::as_str), Some("a"));
        assert_eq!(all.last().map(String::as_str), Some("b"));
        assert_eq!(all[1..all.len() - 1].concat(), long);
    }

    #[test]
    fn the_default_limit_fits_an_sns_message() {
        let lines = vec!["\u{1}".repeat(100_000); 3];
        for c in batch_lines(lines, OUTPUT_BATCH_BYTES) {
            assert!(encoded(&c) < 256 * 1024 - 1_024);
        }
        assert!(batch_lines(Vec::new(), OUTPUT_BATCH_BYTES).is_empty());
    }
}
